"""Diagnosis-key export batches in the EN key-server format.

A batch is a zip with `export.bin` (16-byte header `EK Export v1` padded with spaces, then a
protobuf `TemporaryExposureKeyExport`) and `export.sig` (a `TEKSignatureList`: ECDSA P-256
over SHA-256 of the whole export.bin, DER). Servers list batches in `index.txt`.

Reading is strict about what matters and lenient about what does not: unknown protobuf
fields are skipped (newer servers add some), an absent rolling period means 144, but a key
that is not 16 bytes, a rolling period outside 1..144, a wrong header, an oversized file or
a signature that does not verify is an `InputError`/`SignatureError` naming the file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError

from . import native
from .errors import InputError, SignatureError
from .proto import export_pb2 as pb

HEADER = b"EK Export v1".ljust(16, b" ")
SIGNATURE_ALGORITHM = "1.2.840.10045.4.3.2"  # ECDSA with SHA-256
MAX_FILE_BYTES = 64 * 1024 * 1024  # the largest national daily files are a few MB
MAX_ENTRY_BYTES = 64 * 1024 * 1024
MAX_KEYS_PER_BATCH = 750_000  # per field (keys, revised_keys); servers split far below this
MAX_SIGNATURES = 16  # one per signing key; EN servers sign with one or two
MAX_SIG_BYTES = 64 * 1024

REPORT_TYPES = {
    0: "UNKNOWN",
    1: "CONFIRMED_TEST",
    2: "CONFIRMED_CLINICAL_DIAGNOSIS",
    3: "SELF_REPORT",
    4: "RECURSIVE",
    5: "REVOKED",
}
REVOKED = 5


@dataclass(frozen=True)
class DiagnosisKey:
    key_data: bytes
    rolling_start_interval_number: int
    rolling_period: int = 144
    report_type: int = 1
    transmission_risk_level: int = 0
    days_since_onset_of_symptoms: int | None = None

    def validate(self, where: str = "key") -> None:
        if len(self.key_data) != 16:
            raise InputError(f"{where}: key_data is {len(self.key_data)} bytes, expected 16")
        if not 1 <= self.rolling_period <= 144:
            raise InputError(f"{where}: rolling_period {self.rolling_period} is outside 1..144")
        if self.rolling_start_interval_number < 0:
            raise InputError(f"{where}: negative rolling_start_interval_number")
        if self.report_type not in REPORT_TYPES:
            raise InputError(f"{where}: unknown report_type {self.report_type}")

    def to_json(self) -> dict:
        return {
            "key_data": self.key_data.hex(),
            "rolling_start_interval_number": self.rolling_start_interval_number,
            "rolling_period": self.rolling_period,
            "report_type": self.report_type,
            "transmission_risk_level": self.transmission_risk_level,
            "days_since_onset_of_symptoms": self.days_since_onset_of_symptoms,
        }

    @classmethod
    def from_json(cls, obj: dict, where: str = "key") -> "DiagnosisKey":
        """Accepts our JSON form (hex key_data) and the EN upload form (base64 `key`)."""
        try:
            if "key_data" in obj:
                raw = bytes.fromhex(obj["key_data"])
            else:
                raw = base64.b64decode(obj["key"], validate=True)
            key = cls(
                key_data=raw,
                rolling_start_interval_number=int(
                    obj.get("rolling_start_interval_number", obj.get("rollingStartNumber"))
                ),
                rolling_period=int(obj.get("rolling_period", obj.get("rollingPeriod", 144))),
                report_type=int(obj.get("report_type", obj.get("reportType", 1))),
                transmission_risk_level=int(
                    obj.get("transmission_risk_level", obj.get("transmissionRisk", 0))
                ),
                days_since_onset_of_symptoms=obj.get(
                    "days_since_onset_of_symptoms", obj.get("daysSinceOnsetOfSymptoms")
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: malformed key ({exc.__class__.__name__})") from None
        key.validate(where)
        return key


class KeyColumns:
    """Diagnosis keys as columns (one array per field, no Python object per key).

    `key_data` is one bytes object of 16 bytes a key; the others are numpy arrays:
    `start` and `period` (uint32), `report_type` (uint8), `transmission_risk` and
    `days_since_onset` (int32), `has_onset` (bool: days_since_onset was given)."""

    __slots__ = ("key_data", "start", "period", "report_type", "transmission_risk", "days_since_onset", "has_onset")

    def __init__(self, key_data: bytes, start, period, report_type, transmission_risk, days_since_onset, has_onset):
        self.key_data = bytes(key_data)
        self.start = np.asarray(start, dtype="=u4")
        self.period = np.asarray(period, dtype="=u4")
        self.report_type = np.asarray(report_type, dtype="u1")
        self.transmission_risk = np.asarray(transmission_risk, dtype="=i4")
        self.days_since_onset = np.asarray(days_since_onset, dtype="=i4")
        self.has_onset = np.asarray(has_onset, dtype=bool)
        n = len(self.key_data) // 16
        if len(self.key_data) != 16 * n or any(len(a) != n for a in (
                self.start, self.period, self.report_type, self.transmission_risk, self.days_since_onset,
                self.has_onset)):
            raise ValueError("key columns of different lengths")

    def __len__(self) -> int:
        return len(self.key_data) // 16

    @classmethod
    def empty(cls) -> "KeyColumns":
        return cls(b"", [], [], [], [], [], [])

    @classmethod
    def from_keys(cls, keys: Iterable["DiagnosisKey"]) -> "KeyColumns":
        keys = list(keys)
        return cls(
            b"".join(k.key_data for k in keys),
            [k.rolling_start_interval_number for k in keys],
            [k.rolling_period for k in keys],
            [k.report_type for k in keys],
            [k.transmission_risk_level for k in keys],
            [k.days_since_onset_of_symptoms or 0 for k in keys],
            [k.days_since_onset_of_symptoms is not None for k in keys],
        )

    @classmethod
    def concat(cls, parts: Sequence["KeyColumns"]) -> "KeyColumns":
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(
            b"".join(p.key_data for p in parts),
            *(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__slots__[1:]),
        )

    def key(self, i: int) -> "DiagnosisKey":
        return DiagnosisKey(
            key_data=self.key_data[16 * i : 16 * i + 16],
            rolling_start_interval_number=int(self.start[i]),
            rolling_period=int(self.period[i]),
            report_type=int(self.report_type[i]),
            transmission_risk_level=int(self.transmission_risk[i]),
            days_since_onset_of_symptoms=int(self.days_since_onset[i]) if self.has_onset[i] else None,
        )

    def to_keys(self) -> list["DiagnosisKey"]:
        return [self.key(i) for i in range(len(self))]


@dataclass
class ExportBatch:
    source: str
    export_bin: bytes
    start_timestamp: int
    end_timestamp: int
    region: str
    batch_num: int
    batch_size: int
    signature_infos: list[dict]
    key_columns: KeyColumns
    revised_columns: KeyColumns
    signature: str  # "valid" | "invalid" | "unsigned" | "unchecked"
    signatures_present: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.export_bin).hexdigest()

    @property
    def keys(self) -> list[DiagnosisKey]:
        """The keys as objects (built on first use; the matcher reads `key_columns`)."""
        if "keys" not in self.extra:
            self.extra["keys"] = self.key_columns.to_keys()
        return self.extra["keys"]

    @property
    def revised_keys(self) -> list[DiagnosisKey]:
        if "revised_keys" not in self.extra:
            self.extra["revised_keys"] = self.revised_columns.to_keys()
        return self.extra["revised_keys"]

    def to_json(self) -> dict:
        return {
            "file": self.source,
            "start_timestamp": self.start_timestamp,
            "end_timestamp": self.end_timestamp,
            "region": self.region,
            "batch_num": self.batch_num,
            "batch_size": self.batch_size,
            "signature_infos": self.signature_infos,
            "keys": [k.to_json() for k in self.keys],
            "revised_keys": [k.to_json() for k in self.revised_keys],
            "signature": self.signature,
            "sha256": self.sha256,
        }


# ---------------------------------------------------------------------------- keys (PEM)


def load_public_key(path: str | Path) -> ec.EllipticCurvePublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read public key ({exc.strerror})") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise InputError(f"{path}: not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise InputError(f"{path}: not an ECDSA P-256 public key")
    return key


def load_private_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read signing key ({exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InputError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise InputError(f"{path}: not an ECDSA P-256 private key")
    return key


def generate_signing_key(directory: str | Path, name: str = "signing") -> tuple[Path, Path]:
    """Create `<name>.pem` (private, mode 0600) and `<name>.pub.pem` in `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    priv = d / f"{name}.pem"
    pub = d / f"{name}.pub.pem"
    priv.touch(mode=0o600, exist_ok=True)
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub


# ---------------------------------------------------------------------------- reading


def _read_limited(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError(f"{path}: file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
        if not path.is_file():
            raise InputError(f"{path}: not a regular file")
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})") from None


# What the zip layer may raise on damaged or unusual input (zlib.error, lzma.LZMAError and
# OSError from the decompressors, NotImplementedError for unsupported methods and versions,
# RuntimeError for encrypted entries, struct.error/EOFError/ValueError for truncated records).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
               RuntimeError, struct.error, OverflowError, UnicodeDecodeError, KeyError, IndexError, TypeError)
try:
    import zlib
    _ZIP_ERRORS += (zlib.error,)
except ImportError:  # pragma: no cover
    pass
try:
    import lzma
    _ZIP_ERRORS += (lzma.LZMAError,)
except ImportError:  # pragma: no cover
    pass

_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
MAX_ZIP_ENTRIES = 64


def _zip_entry(zf: zipfile.ZipFile, name: str, source: str, limit: int | None = None,
               too_big: type = InputError) -> bytes | None:
    limit = MAX_ENTRY_BYTES if limit is None else limit
    try:
        info = zf.getinfo(name)
    except KeyError:
        return None
    if info.flag_bits & 0x1:
        raise InputError(f"{source}: {name} is encrypted")
    if info.compress_type not in _METHODS:
        raise InputError(f"{source}: {name} uses zip compression method {info.compress_type};"
                         " only stored and deflate are supported")
    if info.file_size > limit:
        raise too_big(f"{source}: {name} unpacks to {info.file_size} bytes, over the {limit}-byte limit")
    try:
        with zf.open(info) as fh:
            data = fh.read(limit + 1)
    except _ZIP_ERRORS as exc:
        raise InputError(f"{source}: {name} is damaged ({exc.__class__.__name__})") from None
    if len(data) > limit:
        raise too_big(f"{source}: {name} unpacks past the {limit}-byte limit")
    return data


# ---------------------------------------------------------------------------- protobuf walk
#
# export.bin is read straight from the protobuf wire format: the repeated `keys` (7) and
# `revised_keys` (8) fields go to columns (by the native kernel's walker when it is built,
# else by the equivalent Python below), every other top-level field to a small header parse.
# Both walkers accept and refuse exactly the same inputs with the same messages.


class _Corrupt(Exception):
    pass


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    v = 0
    shift = 0
    while True:
        if pos >= end or shift >= 70:
            raise _Corrupt
        b = buf[pos]
        pos += 1
        if shift == 63 and b > 1:
            raise _Corrupt
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v, pos
        shift += 7


def _fields(buf: bytes, pos: int, end: int):
    """(field, wire type, value, start of field, end of field): value is an int for varint and
    fixed types, a (start, end) pair for length-delimited ones. _Corrupt("tag", start) or
    _Corrupt("field", number, start) on malformed input."""
    while pos < end:
        start = pos
        try:
            tag, pos = _varint(buf, pos, end)
        except _Corrupt:
            raise _Corrupt("tag", start) from None
        f, wt = tag >> 3, tag & 7
        if f == 0 or f > 0x1FFFFFFF:
            raise _Corrupt("tag", start)
        try:
            if wt == 0:
                v, pos = _varint(buf, pos, end)
            elif wt == 1:
                if end - pos < 8:
                    raise _Corrupt
                v = int.from_bytes(buf[pos : pos + 8], "little")
                pos += 8
            elif wt == 2:
                n, pos = _varint(buf, pos, end)
                if n > end - pos:
                    raise _Corrupt
                v = (pos, pos + n)
                pos += n
            elif wt == 5:
                if end - pos < 4:
                    raise _Corrupt
                v = int.from_bytes(buf[pos : pos + 4], "little")
                pos += 4
            else:
                raise _Corrupt
        except _Corrupt:
            raise _Corrupt("field", f, start) from None
        yield f, wt, v, start, pos


def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _parse_key_py(buf: bytes, a: int, b: int, cols: dict, field_name: str, idx: int) -> None:
    key = None
    start = None
    period, rtype, trl, dso, has_dso = 144, 0, 0, 0, False
    try:
        for f, wt, v, _s, _e in _fields(buf, a, b):
            if f == 1:
                if wt != 2:
                    raise _Corrupt
                if v[1] - v[0] != 16:
                    raise ValueError(f"{field_name}[{idx}]: key_data is {v[1] - v[0]} bytes, expected 16")
                key = buf[v[0] : v[1]]
            elif 2 <= f <= 6:
                if wt != 0:
                    raise _Corrupt
                s32 = _int32(v)
                if f == 2:
                    trl = s32
                elif f == 3:
                    start = s32
                elif f == 4:
                    if not 1 <= s32 <= 144:
                        raise ValueError(f"{field_name}[{idx}]: rolling_period {s32} is outside 1..144")
                    period = s32
                elif f == 5:
                    if 0 <= s32 <= 5:  # a closed proto2 enum: other values are ignored
                        rtype = s32
                else:
                    u = v & 0xFFFFFFFF
                    dso, has_dso = _int32((u >> 1) ^ -(u & 1)), True
    except _Corrupt:
        raise ValueError(f"{field_name}[{idx}] is not a decodable TemporaryExposureKey") from None
    if key is None:
        raise ValueError(f"{field_name}[{idx}]: key_data is missing")
    if start is None:
        raise ValueError(f"{field_name}[{idx}]: rolling_start_interval_number is missing")
    if start < 0:
        raise ValueError(f"{field_name}[{idx}]: negative rolling_start_interval_number")
    cols["key"].append(key)
    for name, val in (("start", start), ("period", period), ("rtype", rtype), ("trl", trl), ("dso", dso),
                      ("has_dso", has_dso)):
        cols[name].append(val)


def _walk_export_py(data: bytes, offset: int, max_keys: int):
    """The Python twin of the native `walk_export` (same results, same errors)."""
    end = len(data)
    rest = []
    spans: dict[int, list] = {7: [], 8: []}
    order: list = []
    try:
        for f, wt, v, s, e in _fields(data, offset, end):
            if f in (7, 8):
                if wt != 2:
                    raise ValueError(f"{'keys' if f == 7 else 'revised_keys'} field has wire type {wt}")
                order.append((f, len(spans[f]), v))
                spans[f].append(v)
            else:
                rest.append(data[s:e])
    except _Corrupt as exc:
        args = exc.args
        if args[0] == "tag":
            raise ValueError(f"corrupt field tag at byte {args[1] - offset}") from None
        raise ValueError(f"truncated or corrupt field {args[1]} at byte {args[2] - offset}") from None
    for f, what in ((7, "keys"), (8, "revised keys")):
        if len(spans[f]) > max_keys:
            raise OverflowError(f"{len(spans[f])} {what}, over the limit of {max_keys} per batch")
    cols = {f: {k: [] for k in ("key", "start", "period", "rtype", "trl", "dso", "has_dso")} for f in (7, 8)}
    for f, i, (a, b) in order:  # in stream order, like the native walker
        _parse_key_py(data, a, b, cols[f], "keys" if f == 7 else "revised_keys", i)
    out = [KeyColumns(b"".join(c["key"]), c["start"], c["period"], c["rtype"], c["trl"], c["dso"], c["has_dso"])
           for c in (cols[7], cols[8])]
    return b"".join(rest), out[0], out[1]


def _columns_native(t) -> KeyColumns:
    n, key, start, period, rtype, trl, dso, has_dso = t
    return KeyColumns(key, np.frombuffer(start, "=u4"), np.frombuffer(period, "=u4"), np.frombuffer(rtype, "u1"),
                      np.frombuffer(trl, "=i4"), np.frombuffer(dso, "=i4"), np.frombuffer(has_dso, "u1").view(bool))


def walk_export(data: bytes, source: str = "export.bin", offset: int = 0,
                max_keys: int = MAX_KEYS_PER_BATCH, *, use_native: bool | None = None):
    """(other top-level fields' bytes, keys, revised keys) of a TemporaryExposureKeyExport."""
    walk = native.walker() if use_native is None or use_native else None
    if use_native and walk is None:
        raise RuntimeError("the native walker is not built")
    try:
        if walk is not None:
            rest, k, r = walk(data, offset, max_keys)
            return rest, _columns_native(k), _columns_native(r)
        return _walk_export_py(data, offset, max_keys)
    except OverflowError as exc:
        raise InputError(f"{source}: export.bin holds {exc}") from None
    except ValueError as exc:
        msg = str(exc)
        if not msg.startswith(("keys[", "revised_keys[")):
            msg = f"not a decodable TemporaryExposureKeyExport ({msg})"
        raise InputError(f"{source}: export.bin: {msg}") from None


def _utf8(buf: bytes, a: int, b: int, what: str, source: str) -> str:
    try:
        return buf[a:b].decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{source}: export.bin: {what} is not UTF-8") from None


def _parse_header(rest: bytes, source: str) -> dict:
    """Header fields of the export (everything but the keys), strictly typed."""
    h = {"start_timestamp": 0, "end_timestamp": 0, "region": "", "batch_num": 0, "batch_size": 0,
         "signature_infos": []}
    want = {1: 1, 2: 1, 3: 2, 4: 0, 5: 0, 6: 2}
    try:
        for f, wt, v, _s, _e in _fields(rest, 0, len(rest)):
            if f not in want:
                continue  # unknown fields are skipped
            if wt != want[f]:
                raise InputError(f"{source}: export.bin: header field {f} has wire type {wt}")
            if f == 1:
                h["start_timestamp"] = v
            elif f == 2:
                h["end_timestamp"] = v
            elif f == 3:
                h["region"] = _utf8(rest, v[0], v[1], "region", source)
            elif f in (4, 5):
                h["batch_num" if f == 4 else "batch_size"] = _int32(v)
            else:
                si = {"verification_key_version": "", "verification_key_id": "", "signature_algorithm": ""}
                names = {3: "verification_key_version", 4: "verification_key_id", 5: "signature_algorithm"}
                for sf, swt, sv, _a, _b in _fields(rest, v[0], v[1]):
                    if sf in names:
                        if swt != 2:
                            raise InputError(f"{source}: export.bin: signature_infos field {sf} has wire type {swt}")
                        si[names[sf]] = _utf8(rest, sv[0], sv[1], names[sf], source)
                h["signature_infos"].append(si)
    except _Corrupt:
        raise InputError(f"{source}: export.bin holds no decodable TemporaryExposureKeyExport header") from None
    return h


def parse_export_bin(data: bytes, source: str) -> pb.TemporaryExposureKeyExport:
    """The whole export as the generated protobuf message (small files, tools and tests; the
    reader itself walks the wire format into columns)."""
    if len(data) < len(HEADER):
        raise InputError(f"{source}: export.bin is truncated ({len(data)} bytes, no header)")
    if data[: len(HEADER)] != HEADER:
        raise InputError(f"{source}: export.bin does not start with the 'EK Export v1' header")
    msg = pb.TemporaryExposureKeyExport()
    try:
        msg.ParseFromString(data[len(HEADER) :])
    except (DecodeError, RuntimeError, ValueError):
        raise InputError(f"{source}: export.bin holds no decodable TemporaryExposureKeyExport (truncated or corrupt)") from None
    return msg


def _signatures(sig_bytes: bytes, source: str) -> list[tuple[str, bytes]]:
    """(algorithm, DER signature) of each entry of export.sig, at most MAX_SIGNATURES."""
    if len(sig_bytes) > MAX_SIG_BYTES:
        raise SignatureError(f"{source}: export.sig is {len(sig_bytes)} bytes, over the {MAX_SIG_BYTES}-byte limit")
    out = []
    try:
        for f, wt, v, _s, _e in _fields(sig_bytes, 0, len(sig_bytes)):
            if f != 1:
                continue
            if wt != 2:
                raise _Corrupt
            if len(out) >= MAX_SIGNATURES:
                raise SignatureError(f"{source}: export.sig holds more than {MAX_SIGNATURES} signatures")
            alg, sig = b"", b""
            for sf, swt, sv, _a, _b in _fields(sig_bytes, v[0], v[1]):
                if sf == 1 and swt == 2:
                    for inf, iwt, iv, _c, _d in _fields(sig_bytes, sv[0], sv[1]):
                        if inf == 5 and iwt == 2:
                            alg = sig_bytes[iv[0] : iv[1]]
                elif sf == 4 and swt == 2:
                    sig = sig_bytes[sv[0] : sv[1]]
                elif sf in (1, 4):
                    raise _Corrupt
            out.append((alg.decode("utf-8", "replace"), sig))
    except _Corrupt:
        raise SignatureError(f"{source}: export.sig is not a decodable TEKSignatureList") from None
    if not out:
        raise SignatureError(f"{source}: export.sig holds no signature")
    return out


def _verify(export_bin: bytes, sig_bytes: bytes, pubkeys: Sequence, source: str) -> bool:
    for alg, sig in _signatures(sig_bytes, source):
        if alg and alg != SIGNATURE_ALGORITHM:
            continue
        for pub in pubkeys:
            try:
                pub.verify(sig, export_bin, ec.ECDSA(hashes.SHA256()))
                return True
            except (InvalidSignature, ValueError, TypeError):
                continue
    return False


def load_batch(
    path: str | Path,
    *,
    pubkeys: Sequence = (),
    allow_unsigned: bool = False,
    strict: bool = True,
) -> ExportBatch:
    """Read a batch zip or a bare export.bin and check it.

    `pubkeys` are public keys (objects or PEM paths). With keys configured, a batch must carry a
    signature that verifies with one of them; a bare export.bin or a zip without export.sig is
    accepted only with `allow_unsigned`. An invalid signature is never accepted: with `strict`
    it raises `SignatureError`, without it the batch comes back marked "invalid" (for inspect).

    Every problem with the file is an `InputError` (exit code 2) or, for the signature, a
    `SignatureError` (3). Work is bounded by the file: at most MAX_SIGNATURES signatures are
    tried, at most MAX_KEYS_PER_BATCH keys per field are read, and no key is read before the
    signature has been checked.
    """
    path = Path(path)
    source = str(path)
    keys = [load_public_key(k) if isinstance(k, (str, Path)) else k for k in pubkeys]
    raw = _read_limited(path)
    return load_batch_bytes(raw, source, pubkeys=keys, allow_unsigned=allow_unsigned, strict=strict)


def load_batch_bytes(raw: bytes, source: str, *, pubkeys: Sequence = (), allow_unsigned: bool = False,
                     strict: bool = True) -> ExportBatch:
    """`load_batch` on the bytes of a file (`pubkeys`: public key objects)."""
    keys = list(pubkeys)
    sig_bytes: bytes | None = None
    if raw[:4] == b"PK\x03\x04" or raw[:4] == b"PK\x05\x06" or _is_zip(raw):
        try:
            zf = zipfile.ZipFile(io.BytesIO(raw))
        except _ZIP_ERRORS:
            raise InputError(f"{source}: not a readable zip file (truncated or corrupt)") from None
        with zf:
            try:
                entries = len(zf.infolist())
            except _ZIP_ERRORS:  # pragma: no cover - infolist is a plain list
                entries = 0
            if entries > MAX_ZIP_ENTRIES:
                raise InputError(f"{source}: the zip has {entries} entries; a batch has export.bin and export.sig")
            export_bin = _zip_entry(zf, "export.bin", source)
            if export_bin is None:
                raise InputError(f"{source}: the zip has no export.bin entry")
            sig_bytes = _zip_entry(zf, "export.sig", source, MAX_SIG_BYTES, SignatureError)
    elif raw[: len(HEADER)] == HEADER:
        export_bin = raw
    elif raw[:2] == b"PK":
        raise InputError(f"{source}: not a readable zip file (truncated or corrupt)")
    else:
        raise InputError(f"{source}: neither a batch zip nor an export.bin with the 'EK Export v1' header")

    if len(export_bin) < len(HEADER):
        raise InputError(f"{source}: export.bin is truncated ({len(export_bin)} bytes, no header)")
    if export_bin[: len(HEADER)] != HEADER:
        raise InputError(f"{source}: export.bin does not start with the 'EK Export v1' header")

    # The signature first: nothing of the keys is read before it is checked.
    if sig_bytes is None:
        status = "unsigned"
        if keys and not allow_unsigned:
            raise SignatureError(
                f"{source}: unsigned (no export.sig) while a public key is configured;"
                " pass --allow-unsigned to accept unsigned files"
            )
    elif not keys:
        _signatures(sig_bytes, source)  # well-formed and bounded, even when not checked
        status = "unchecked"
    elif _verify(export_bin, sig_bytes, keys, source):
        status = "valid"
    else:
        status = "invalid"
        if strict:
            raise SignatureError(f"{source}: signature does not verify with the configured public key(s)")

    rest, kcols, rcols = walk_export(export_bin, source, len(HEADER))
    h = _parse_header(rest, source)
    return ExportBatch(
        source=source,
        export_bin=export_bin,
        start_timestamp=h["start_timestamp"],
        end_timestamp=h["end_timestamp"],
        region=h["region"],
        batch_num=h["batch_num"],
        batch_size=h["batch_size"],
        signature_infos=h["signature_infos"],
        key_columns=kcols,
        revised_columns=rcols,
        signature=status,
        signatures_present=0 if sig_bytes is None else 1,
    )


def _is_zip(raw: bytes) -> bool:
    try:
        return zipfile.is_zipfile(io.BytesIO(raw))
    except _ZIP_ERRORS:
        return False

# ---------------------------------------------------------------------------- writing


def _key_pb(k: DiagnosisKey, out: "pb.TemporaryExposureKey") -> None:
    k.validate()
    out.key_data = k.key_data
    out.rolling_start_interval_number = k.rolling_start_interval_number
    out.rolling_period = k.rolling_period
    out.report_type = k.report_type
    out.transmission_risk_level = k.transmission_risk_level
    if k.days_since_onset_of_symptoms is not None:
        out.days_since_onset_of_symptoms = int(k.days_since_onset_of_symptoms)


def build_export_bin(
    keys: Iterable[DiagnosisKey],
    *,
    start_timestamp: int,
    end_timestamp: int,
    region: str = "TC",
    batch_num: int = 1,
    batch_size: int = 1,
    key_id: str = "tc",
    key_version: str = "v1",
    revised_keys: Iterable[DiagnosisKey] = (),
) -> bytes:
    msg = pb.TemporaryExposureKeyExport()
    msg.start_timestamp = int(start_timestamp)
    msg.end_timestamp = int(end_timestamp)
    msg.region = region
    msg.batch_num = batch_num
    msg.batch_size = batch_size
    si = msg.signature_infos.add()
    si.verification_key_version = key_version
    si.verification_key_id = key_id
    si.signature_algorithm = SIGNATURE_ALGORITHM
    for k in keys:
        _key_pb(k, msg.keys.add())
    for k in revised_keys:
        _key_pb(k, msg.revised_keys.add())
    return HEADER + msg.SerializeToString()


def sign_export_bin(
    export_bin: bytes,
    signing_key: ec.EllipticCurvePrivateKey,
    *,
    batch_num: int = 1,
    batch_size: int = 1,
    key_id: str = "tc",
    key_version: str = "v1",
) -> bytes:
    sig_list = pb.TEKSignatureList()
    sig = sig_list.signatures.add()
    sig.signature_info.verification_key_version = key_version
    sig.signature_info.verification_key_id = key_id
    sig.signature_info.signature_algorithm = SIGNATURE_ALGORITHM
    sig.batch_num = batch_num
    sig.batch_size = batch_size
    sig.signature = signing_key.sign(export_bin, ec.ECDSA(hashes.SHA256()))
    return sig_list.SerializeToString()


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def write_batch(
    path: str | Path,
    keys: Sequence[DiagnosisKey],
    *,
    signing_key: ec.EllipticCurvePrivateKey | str | Path | None,
    start_timestamp: int,
    end_timestamp: int,
    region: str = "TC",
    batch_num: int = 1,
    batch_size: int = 1,
    key_id: str = "tc",
    key_version: str = "v1",
    revised_keys: Sequence[DiagnosisKey] = (),
) -> Path:
    """Write a batch zip (signed unless `signing_key` is None). Atomic: temp file + rename."""
    if isinstance(signing_key, (str, Path)):
        signing_key = load_private_key(signing_key)
    export_bin = build_export_bin(
        keys,
        start_timestamp=start_timestamp,
        end_timestamp=end_timestamp,
        region=region,
        batch_num=batch_num,
        batch_size=batch_size,
        key_id=key_id,
        key_version=key_version,
        revised_keys=revised_keys,
    )
    entries = {"export.bin": export_bin}
    if signing_key is not None:
        entries["export.sig"] = sign_export_bin(
            export_bin, signing_key, batch_num=batch_num, batch_size=batch_size,
            key_id=key_id, key_version=key_version,
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(_zip_bytes(entries))
    tmp.replace(path)
    return path


def write_index(root: str | Path, relpaths: Sequence[str]) -> Path:
    """`index.txt`: one relative path a line, oldest first, no trailing newline."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    index = root / "index.txt"
    tmp = root / "index.txt.tmp"
    tmp.write_text("\n".join(relpaths))
    tmp.replace(index)
    return index


def read_index(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def batch_name(prefix: str, start_timestamp: int, end_timestamp: int, number: int = 1) -> str:
    return f"{prefix}/{start_timestamp}-{end_timestamp}-{number:05d}.zip"


def load_keys_json(path: str | Path) -> list[DiagnosisKey]:
    """Keys for `export make`: a JSON list of key objects, or {"keys": [...]}, or the EN
    upload form {"temporaryExposureKeys": [...]} with base64 keys."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text())
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: not JSON ({exc.__class__.__name__})") from None
    if isinstance(obj, dict):
        obj = obj.get("keys", obj.get("temporaryExposureKeys"))
    if not isinstance(obj, list):
        raise InputError(f"{p}: expected a JSON list of keys")
    return [DiagnosisKey.from_json(o, f"{p}: keys[{i}]") for i, o in enumerate(obj)]
