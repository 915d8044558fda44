"""Client side of a key server: follow its batches by URL, upload diagnosis keys with a code.

`fetch_new_batches(url, cache_dir, pubkeys)` reads index.txt, downloads only the batches it has
not seen before (with their `.chain` records), and verifies before keeping anything:
- every batch's EN signature (export.sig) with one of `pubkeys`,
- every chain record's signature, sequence number and link to the previous batch,
- that the batches seen on earlier calls are still listed first, in the same order, and that the
  first new batch links to the hash of the cached copy of the last one.
A removed, reordered, altered or inserted batch raises SignatureError and nothing is kept.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence
from urllib.parse import urljoin, urlsplit

from ..errors import InputError, NetworkError, SignatureError, TraceCodeError
from . import chain as chainmod

MAX_INDEX_BYTES = 4 * 1024 * 1024
MAX_BATCH_BYTES = 64 * 1024 * 1024
MAX_CHAIN_BYTES = 64 * 1024
HTTP_TIMEOUT_S = 30
_STATE = "keyserver-state.json"


def _get(url: str, limit: int) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as resp:  # noqa: S310 (http(s) only, checked)
            data = resp.read(limit + 1)
    except urllib.error.HTTPError as exc:
        raise NetworkError(f"key server: GET {url} -> HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NetworkError(f"key server unreachable: {url} ({reason})") from None
    if len(data) > limit:
        raise InputError(f"key server: {url} is larger than {limit} bytes")
    return data


def index_url_of(url: str) -> str:
    if urlsplit(url).scheme not in ("http", "https"):
        raise InputError(f"not an http(s) URL: {url}")
    return url if url.endswith(".txt") else url.rstrip("/") + "/index.txt"


def _entry_url(index_url: str, entry: str) -> str:
    """Resolve an index line. EN servers list paths relative to the bucket root, which is the
    parent of `<root>/index.txt` when the line starts with `<root>/`, else the index's folder."""
    idx_dir = PurePosixPath(urlsplit(index_url).path).parent
    first = entry.split("/", 1)[0]
    base_path = idx_dir.parent if idx_dir.name and idx_dir.name == first and "/" in entry else idx_dir
    base = urljoin(index_url, str(base_path).rstrip("/") + "/")
    return urljoin(base, entry)


def parse_index(data: bytes) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("index.txt is not UTF-8 text") from None
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    for ln in lines:
        p = PurePosixPath(ln)
        if p.is_absolute() or ".." in p.parts or not ln.endswith(".zip") or "\\" in ln:
            raise InputError(f"index.txt: bad entry {ln[:80]!r}")
    if len(set(lines)) != len(lines):
        raise SignatureError("index.txt lists a batch twice")
    return lines


def _public_keys(pubkeys: Iterable[Any]) -> list:
    from .. import export

    out = []
    for k in pubkeys:
        if isinstance(k, (str, os.PathLike)):
            out.append(export.load_public_key(k))
        else:
            out.append(k)
    if not out:
        raise InputError("at least one public key is needed to follow a key server")
    return out


def _load_state(path: Path, index_url: str) -> list[dict]:
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text())
        return list(doc["servers"].get(index_url, {}).get("seen", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{path}: corrupt key server cache state (remove it to start over)") from None


def _save_state(path: Path, index_url: str, seen: list[dict]) -> None:
    doc: dict = {"servers": {}}
    if path.exists():
        try:
            doc = json.loads(path.read_text())
            doc.setdefault("servers", {})
        except ValueError:
            doc = {"servers": {}}
    doc["servers"][index_url] = {"seen": seen}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def fetch_new_batches(url: str, cache_dir: str | os.PathLike[str], pubkeys: Sequence[Any]) -> list[Path]:
    """Download and verify the batches of `url` not fetched before; return their local paths (oldest first).

    `url` is the key server's base URL (its top-level index.txt) or an index.txt URL.
    `pubkeys` are public key objects or PEM paths of the server's export signing key.
    """
    from .. import export

    keys = _public_keys(pubkeys)
    index_url = index_url_of(url)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    state_path = cache / _STATE
    seen = _load_state(state_path, index_url)
    entries = parse_index(_get(index_url, MAX_INDEX_BYTES))

    for i, s in enumerate(seen):
        if i >= len(entries) or entries[i] != s["batch"]:
            raise SignatureError(
                f"key server history changed: batch {s['batch']} (seen before as number {s['seq']}) "
                "is no longer listed in that place (removed or reordered)")
    new_entries = entries[len(seen):]
    if not new_entries:
        return []

    prev_batch = seen[-1]["batch"] if seen else None
    prev_hash = seen[-1]["export_sha256"] if seen else chainmod.GENESIS
    if seen:   # the link is checked against our own copy of the last batch, not the server's word
        prev_hash = _cached_export_hash(cache / seen[-1]["batch"])
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=cache))
    try:
        staged: list[tuple[str, Path, Path, dict]] = []
        for n, entry in enumerate(new_entries, start=len(seen) + 1):
            chain_rel = chainmod.chain_path_for(entry)
            try:
                chain_data = _get(_entry_url(index_url, chain_rel), MAX_CHAIN_BYTES)
            except TraceCodeError:
                raise SignatureError(f"{entry}: no chain record on the server") from None
            record = chainmod.ChainRecord.from_json(chain_data, name=chain_rel)
            record.verify(keys, name=chain_rel)
            if record.batch != entry:
                raise SignatureError(f"{chain_rel}: chain record names another batch ({record.batch})")
            chainmod.check_link(record, expected_seq=n, prev_batch=prev_batch, prev_export_sha256=prev_hash)
            zip_data = _get(_entry_url(index_url, entry), MAX_BATCH_BYTES)
            zpath = staging / f"{n:06d}.zip"
            zpath.write_bytes(zip_data)
            batch = export.load_batch(zpath, pubkeys=keys)
            if getattr(batch, "signature", "valid") != "valid":
                raise SignatureError(f"{entry}: export signature is {batch.signature}")
            got = chainmod.sha256_hex(batch.export_bin)
            if got != record.export_sha256:
                raise SignatureError(f"{entry}: export.bin does not match its chain record (altered batch)")
            cpath = staging / f"{n:06d}.chain"
            cpath.write_bytes(chain_data)
            staged.append((entry, zpath, cpath, {"batch": entry, "seq": n, "export_sha256": got}))
            prev_batch, prev_hash = entry, got
        out: list[Path] = []
        for entry, zpath, cpath, info in staged:
            final = cache / entry
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(zpath, final)
            os.replace(cpath, cache / chainmod.chain_path_for(entry))
            out.append(final)
            seen.append(info)
        _save_state(state_path, index_url, seen)
        return out
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _cached_export_hash(path: Path) -> str:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return chainmod.sha256_hex(zf.read("export.bin"))
    except (OSError, KeyError, zipfile.BadZipFile):
        raise InputError(f"{path}: cached batch missing or damaged (remove the cache folder to start over)") from None


def cached_batches(cache_dir: str | os.PathLike[str], url: str) -> list[Path]:
    """All batches fetched so far from `url` (oldest first)."""
    cache = Path(cache_dir)
    seen = _load_state(cache / _STATE, index_url_of(url))
    return [cache / s["batch"] for s in seen]


def upload_keys(url: str, code: str, keys: Iterable[Any], *, timeout_s: float = HTTP_TIMEOUT_S) -> dict:
    """POST diagnosis keys with a verification code to `<url>/v1/upload`; return the server's answer.

    Keys are UploadKey / export.DiagnosisKey objects or dicts in the upload JSON shape.
    """
    items = []
    for k in keys:
        if isinstance(k, dict):
            item = dict(k)
            if isinstance(item.get("key_data"), (bytes, bytearray)):
                item["key_data"] = bytes(item["key_data"]).hex()
        else:
            item = {
                "key_data": bytes(k.key_data).hex(),
                "rolling_start_interval_number": int(k.rolling_start_interval_number),
                "rolling_period": int(getattr(k, "rolling_period", 144)),
                "report_type": int(getattr(k, "report_type", 1)),
                "days_since_onset_of_symptoms": getattr(k, "days_since_onset_of_symptoms", None),
            }
        items.append(item)
    if urlsplit(url).scheme not in ("http", "https"):
        raise InputError(f"not an http(s) URL: {url}")
    body = json.dumps({"code": code, "keys": items}).encode("utf-8")
    req = urllib.request.Request(url.rstrip("/") + "/v1/upload", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            return json.loads(resp.read(MAX_CHAIN_BYTES).decode("utf-8"))
    except urllib.error.HTTPError as exc:
        try:
            msg = json.loads(exc.read(MAX_CHAIN_BYTES).decode("utf-8")).get("message", "")
        except (ValueError, UnicodeDecodeError, AttributeError):
            msg = ""
        raise NetworkError(f"key server refused the upload: HTTP {exc.code} {msg}".strip()) from None
    except (urllib.error.URLError, OSError) as exc:
        raise NetworkError(f"key server unreachable: {url} ({getattr(exc, 'reason', exc)})") from None
