"""The key server's folder: codes, uploads and published batches.

    DIR/state.sqlite       codes (hashed), uploads, batches           (never served)
    DIR/keys/              export signing key pair (private + public PEM)  (never served)
    DIR/www/               the published tree, served over HTTP:
        index.txt          same lines as <root>/index.txt (so a client can be given the base URL)
        <root>/index.txt   one batch path a line, oldest first, no trailing newline
        <root>/<start>-<end>-<NNNNN>.zip    signed EN export batch
        <root>/<start>-<end>-<NNNNN>.chain  hash-chain record (see chain.py)

All state changes are SQLite transactions; files are written to a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import export
from ..errors import InputError, TraceCodeError
from ..export import DiagnosisKey
from . import chain as chainmod

SCHEMA_VERSION = 1
MAX_KEYS_PER_UPLOAD = 15           # 14 days + today
MAX_KEYS_PER_BATCH = 10_000
DEFAULT_CODE_TTL_S = 24 * 3600
_CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"   # Crockford base32: no I, L, O, U
_CODE_LEN = 12
_CODE_CONFUSABLE = str.maketrans({"O": "0", "I": "1", "L": "1"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS codes (
    code_hash  TEXT PRIMARY KEY,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE TABLE IF NOT EXISTS uploads (
    id          INTEGER PRIMARY KEY,
    code_hash   TEXT NOT NULL UNIQUE REFERENCES codes(code_hash),
    received_at INTEGER NOT NULL,
    keys_json   TEXT NOT NULL,
    batch_seq   INTEGER REFERENCES batches(seq)
);
CREATE TABLE IF NOT EXISTS batches (
    seq           INTEGER PRIMARY KEY,
    relpath       TEXT NOT NULL UNIQUE,
    export_sha256 TEXT NOT NULL,
    start_ts      INTEGER NOT NULL,
    end_ts        INTEGER NOT NULL,
    key_count     INTEGER NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS published_keys (
    key_data  TEXT NOT NULL,
    rsin      INTEGER NOT NULL,
    batch_seq INTEGER NOT NULL REFERENCES batches(seq),
    PRIMARY KEY (key_data, rsin)
);
"""


class UploadRejected(TraceCodeError):
    """An upload the server refuses; `status` is the HTTP status, `code` a short error name."""

    def __init__(self, message: str, *, status: int = 400, code: str = "bad_request"):
        super().__init__(message, exit_code=2 if status < 500 else 1)
        self.status = status
        self.code = code


# An accepted upload's key is a diagnosis key as the export format has it (the upload carries
# no transmission risk level; it stays 0).
UploadKey = DiagnosisKey


def normalize_code(code: str) -> str:
    return "".join(ch for ch in code.upper() if ch not in "- \t").translate(_CODE_CONFUSABLE)


def hash_code(code: str) -> str:
    return hashlib.sha256(b"tracecode-code-v1:" + normalize_code(code).encode("ascii", "replace")).hexdigest()


def _int_field(obj: dict, name: str, *, lo: int, hi: int, default: Any = ..., idx: int) -> Any:
    if name not in obj or obj[name] is None:
        if default is ...:
            raise UploadRejected(f"key {idx}: missing {name}", code="bad_key")
        return default
    value = obj[name]
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise UploadRejected(f"key {idx}: {name} must be an integer in {lo}..{hi}", code="bad_key")
    return value


def parse_upload(doc: Any) -> tuple[str, list[UploadKey]]:
    """Validate an upload document; return (code, keys) or raise UploadRejected."""
    if not isinstance(doc, dict):
        raise UploadRejected("upload must be a JSON object")
    code = doc.get("code")
    if not isinstance(code, str) or not 4 <= len(code) <= 64:
        raise UploadRejected("missing or malformed verification code", code="bad_code_format")
    keys = doc.get("keys")
    if not isinstance(keys, list) or not keys:
        raise UploadRejected("'keys' must be a non-empty list", code="bad_keys")
    if len(keys) > MAX_KEYS_PER_UPLOAD:
        raise UploadRejected(f"too many keys: {len(keys)} (at most {MAX_KEYS_PER_UPLOAD})", code="too_many_keys")
    out: list[UploadKey] = []
    seen: set[bytes] = set()
    for i, k in enumerate(keys):
        if not isinstance(k, dict):
            raise UploadRejected(f"key {i}: must be an object", code="bad_key")
        kd = k.get("key_data")
        try:
            raw = bytes.fromhex(kd) if isinstance(kd, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 16:
            raise UploadRejected(f"key {i}: key_data must be 16 bytes as 32 hex digits", code="bad_key")
        if raw in seen:
            raise UploadRejected(f"key {i}: duplicate key_data", code="bad_key")
        seen.add(raw)
        rsin = _int_field(k, "rolling_start_interval_number", lo=0, hi=2**31 - 1, idx=i)
        period = _int_field(k, "rolling_period", lo=1, hi=144, default=144, idx=i)
        rtype = _int_field(k, "report_type", lo=1, hi=5, default=1, idx=i)
        dsos = _int_field(k, "days_since_onset_of_symptoms", lo=-14, hi=14, default=None, idx=i)
        out.append(DiagnosisKey(key_data=raw, rolling_start_interval_number=rsin, rolling_period=period,
                                report_type=rtype, days_since_onset_of_symptoms=dsos))
    return code, out


class KeyServer:
    """A key server folder. Each method opens its own SQLite connection (thread safe)."""

    def __init__(self, directory: str | os.PathLike[str], *, clock: Callable[[], float] = time.time):
        # `clock` gives "now" for code expiry, upload times and batch timestamps; a simulation
        # passes its virtual clock so that batches carry virtual-time timestamps.
        self.clock = clock
        self.dir = Path(directory)
        self.db_path = self.dir / "state.sqlite"
        self.keys_dir = self.dir / "keys"
        self.www = self.dir / "www"
        if not self.db_path.is_file() or not self.keys_dir.is_dir():
            raise TraceCodeError(f"{self.dir} is not a key server folder", exit_code=2,
                                 hint=f"run: tracecode keyserver init --dir {self.dir}")
        meta = self._meta()
        self.region = meta.get("region", "TC")
        self.root = meta.get("root", "tc")
        self.key_id = meta.get("key_id", "tc")
        self.key_version = meta.get("key_version", "v1")
        self._meta_names = meta

    # -- setup -------------------------------------------------------------------------

    @classmethod
    def init(cls, directory: str | os.PathLike[str], *, region: str = "TC", root: str = "tc",
             key_id: str = "tc", key_version: str = "v1",
             clock: Callable[[], float] = time.time) -> "KeyServer":
        """Create (or open, idempotently) a key server folder with a fresh signing key."""

        d = Path(directory)
        if not root or "/" in root or root.startswith(".") or not root.isprintable():
            raise InputError(f"bad root name {root!r}: one path component, no dot first")
        d.mkdir(parents=True, exist_ok=True)
        keys = d / "keys"
        key_names: dict[str, str] = {}
        if not (keys.is_dir() and any(keys.glob("*.pem"))):
            keys.mkdir(exist_ok=True)
            os.chmod(keys, 0o700)
            priv, pub = export.generate_signing_key(keys)
            key_names = {"private_key": Path(priv).name, "public_key": Path(pub).name}
        conn = _connect(d / "state.sqlite")
        try:
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN")
            for name, value in (("schema_version", str(SCHEMA_VERSION)), ("region", region),
                                ("root", root), ("key_id", key_id), ("key_version", key_version),
                                *key_names.items()):
                conn.execute("INSERT OR IGNORE INTO meta(name, value) VALUES (?, ?)", (name, value))
            conn.execute("COMMIT")
        finally:
            conn.close()
        ks = cls(d, clock=clock)
        ks.write_index()
        return ks

    def _meta(self) -> dict[str, str]:
        conn = self._conn()
        try:
            return dict(conn.execute("SELECT name, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise TraceCodeError(f"{self.db_path}: not a key server database ({exc})") from None
        finally:
            conn.close()

    def _conn(self) -> sqlite3.Connection:
        return _connect(self.db_path)

    def private_key_path(self) -> Path:
        if "private_key" in self._meta_names:
            return self.keys_dir / self._meta_names["private_key"]
        for name in ("private.pem", "signing_key.pem", "private_key.pem"):
            if (self.keys_dir / name).is_file():
                return self.keys_dir / name
        cands = sorted(p for p in self.keys_dir.glob("*.pem") if "priv" in p.name)
        if not cands:
            raise TraceCodeError(f"no signing key in {self.keys_dir}")
        return cands[0]

    def public_key_path(self) -> Path:
        if "public_key" in self._meta_names:
            return self.keys_dir / self._meta_names["public_key"]
        for name in ("public.pem", "public_key.pem"):
            if (self.keys_dir / name).is_file():
                return self.keys_dir / name
        cands = sorted(p for p in self.keys_dir.glob("*.pem") if "pub" in p.name)
        if not cands:
            raise TraceCodeError(f"no public key in {self.keys_dir}")
        return cands[0]

    # -- verification codes --------------------------------------------------------------

    def issue_code(self, *, ttl_s: int = DEFAULT_CODE_TTL_S, now: float | None = None) -> tuple[str, int]:
        """A fresh one-time code and its expiry (Unix seconds). Only its hash is stored."""
        if ttl_s <= 0:
            raise InputError("code lifetime must be positive")
        t = int(self.clock() if now is None else now)
        raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_LEN))
        code = "-".join(raw[i:i + 4] for i in range(0, _CODE_LEN, 4))
        conn = self._conn()
        try:
            conn.execute("INSERT INTO codes(code_hash, issued_at, expires_at) VALUES (?, ?, ?)",
                         (hash_code(code), t, t + ttl_s))
        finally:
            conn.close()
        return code, t + ttl_s

    # -- uploads ---------------------------------------------------------------------------

    def accept_upload(self, code: str, keys: Iterable[UploadKey], *, now: float | None = None) -> int:
        """Store an upload if `code` is valid, unexpired and unused; burn the code. Returns the upload id."""
        keys = list(keys)
        if not keys:
            raise UploadRejected("no keys", code="bad_keys")
        t = int(self.clock() if now is None else now)
        h = hash_code(code)
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT expires_at, used_at FROM codes WHERE code_hash = ?", (h,)).fetchone()
            if row is None:
                conn.execute("ROLLBACK")
                raise UploadRejected("unknown verification code", status=403, code="invalid_code")
            if row[1] is not None:
                conn.execute("ROLLBACK")
                raise UploadRejected("verification code already used", status=403, code="code_used")
            if row[0] <= t:
                conn.execute("ROLLBACK")
                raise UploadRejected("verification code expired", status=403, code="code_expired")
            conn.execute("UPDATE codes SET used_at = ? WHERE code_hash = ?", (t, h))
            cur = conn.execute("INSERT INTO uploads(code_hash, received_at, keys_json) VALUES (?, ?, ?)",
                               (h, t, json.dumps([k.to_json() for k in keys])))
            conn.execute("COMMIT")
            return int(cur.lastrowid or 0)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    # -- publishing ----------------------------------------------------------------------

    def batches(self) -> list[dict]:
        conn = self._conn()
        try:
            rows = conn.execute("SELECT seq, relpath, export_sha256, start_ts, end_ts, key_count "
                                "FROM batches ORDER BY seq").fetchall()
        finally:
            conn.close()
        return [dict(seq=r[0], path=r[1], export_sha256=r[2], start_timestamp=r[3],
                     end_timestamp=r[4], keys=r[5]) for r in rows]

    def status(self) -> dict:
        conn = self._conn()
        try:
            pending = conn.execute("SELECT COUNT(*) FROM uploads WHERE batch_seq IS NULL").fetchone()[0]
            uploads = conn.execute("SELECT COUNT(*) FROM uploads").fetchone()[0]
            codes = conn.execute("SELECT COUNT(*), COUNT(used_at) FROM codes").fetchone()
        finally:
            conn.close()
        b = self.batches()
        return {"dir": str(self.dir), "region": self.region, "root": self.root,
                "codes_issued": codes[0], "codes_used": codes[1], "uploads": uploads,
                "uploads_pending": pending, "batches": len(b),
                "keys_published": sum(x["keys"] for x in b),
                "index": f"{self.root}/index.txt"}

    def publish(self, *, now: float | None = None, max_keys_per_batch: int = MAX_KEYS_PER_BATCH) -> list[str]:
        """Turn pending uploads into signed batches; rewrite index.txt. Returns new batch paths."""

        signing_key = export.load_private_key(self.private_key_path())
        t = int(self.clock() if now is None else now)
        (self.www / self.root).mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        new_paths: list[str] = []
        written: list[Path] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            uploads = conn.execute("SELECT id, received_at, keys_json FROM uploads "
                                   "WHERE batch_seq IS NULL ORDER BY id").fetchall()
            if not uploads:
                conn.execute("ROLLBACK")
                self.write_index()
                return []
            published = {(r[0], r[1]) for r in conn.execute("SELECT key_data, rsin FROM published_keys")}
            keys: dict[tuple[str, int], dict] = {}
            for _, _, kj in uploads:
                for k in json.loads(kj):
                    ident = (k["key_data"], k["rolling_start_interval_number"])
                    if ident not in published and ident not in keys:
                        keys[ident] = k
            # Sorted by key bytes: the order carries no hint of who uploaded what, or when.
            ordered = [keys[i] for i in sorted(keys)]
            last = conn.execute("SELECT seq, relpath, export_sha256, end_ts FROM batches "
                                "ORDER BY seq DESC LIMIT 1").fetchone()
            start = int(last[3]) if last else min(int(u[1]) for u in uploads)
            end = max(t, start + 1)
            chunks = [ordered[i:i + max_keys_per_batch] for i in range(0, len(ordered), max_keys_per_batch)]
            prev_seq, prev_path, prev_hash = (last[0], last[1], last[2]) if last else (0, None, chainmod.GENESIS)
            batch_seq = None
            for n, chunk in enumerate(chunks, start=1):
                rel = f"{self.root}/{start}-{end}-{n:05d}.zip"
                final = self.www / rel
                tmp = final.with_name(final.name + ".tmp")
                export.write_batch(
                    tmp,
                    [DiagnosisKey.from_json(k, rel) for k in chunk],
                    signing_key=signing_key, start_timestamp=start, end_timestamp=end,
                    region=self.region, batch_num=n, batch_size=len(chunks),
                    key_id=self.key_id, key_version=self.key_version)
                with zipfile.ZipFile(tmp) as zf:
                    export_hash = chainmod.sha256_hex(zf.read("export.bin"))
                seq = prev_seq + 1
                record = chainmod.ChainRecord(seq, rel, export_hash, prev_path, prev_hash).signed(signing_key)
                chain_final = self.www / chainmod.chain_path_for(rel)
                _atomic_write(chain_final, record.to_json())
                os.replace(tmp, final)
                written += [final, chain_final]
                conn.execute("INSERT INTO batches(seq, relpath, export_sha256, start_ts, end_ts, key_count, "
                             "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (seq, rel, export_hash, start, end, len(chunk), int(time.time())))
                conn.executemany("INSERT INTO published_keys(key_data, rsin, batch_seq) VALUES (?, ?, ?)",
                                 [(k["key_data"], k["rolling_start_interval_number"], seq) for k in chunk])
                batch_seq = seq
                new_paths.append(rel)
                prev_seq, prev_path, prev_hash = seq, rel, export_hash
            if batch_seq is None:      # every key was already published: nothing new to sign
                batch_seq = last[0] if last else None
            if batch_seq is not None:
                conn.executemany("UPDATE uploads SET batch_seq = ? WHERE id = ?",
                                 [(batch_seq, u[0]) for u in uploads])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for p in written:
                p.unlink(missing_ok=True)
            raise
        finally:
            conn.close()
        self.write_index()
        return new_paths

    def write_index(self) -> None:
        """(Re)write <root>/index.txt and the top-level copy from the database, then stats.json."""
        lines = [b["path"] for b in self.batches()]
        data = "\n".join(lines).encode("utf-8")
        (self.www / self.root).mkdir(parents=True, exist_ok=True)
        _atomic_write(self.www / self.root / "index.txt", data)
        _atomic_write(self.www / "index.txt", data)
        self.write_stats(lines)

    def write_stats(self, lines: list[str] | None = None) -> None:
        """<root>/stats.json + stats.json.sig: the open statistics of the published batches,
        computed only from the published files themselves (tracecode.stats), signed with the
        export signing key (detached base64 DER ECDSA P-256 / SHA-256)."""
        from .. import stats

        if lines is None:
            lines = [b["path"] for b in self.batches()]
        pub = export.load_public_key(self.public_key_path())
        batches = [export.load_batch(self.www / rel, pubkeys=[pub]) for rel in lines]
        doc = stats.stats_document(batches, lines)
        sig = stats.sign_stats(doc, export.load_private_key(self.private_key_path()))
        folder = self.www / self.root
        # signature first, then the document: a reader never sees a new document with no signature
        # for it for longer than the two renames (it may see the old pair or a mismatch, and retries)
        _atomic_write(folder / stats.STATS_SIG_FILE, sig)
        _atomic_write(folder / stats.STATS_FILE, doc)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)   # explicit transactions
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
