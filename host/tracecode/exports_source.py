"""Where diagnosis-key batches come from: files, folders with index.txt, key-server URLs."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Sequence

from . import export
from .errors import InputError, TraceCodeError

MAX_DOWNLOAD = export.MAX_FILE_BYTES


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tracecode" / "exports"


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            data = resp.read(MAX_DOWNLOAD + 1)
    except urllib.error.HTTPError as exc:
        raise TraceCodeError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TraceCodeError(f"{url}: cannot download ({reason})") from None
    if len(data) > MAX_DOWNLOAD:
        raise InputError(f"{url}: larger than {MAX_DOWNLOAD} bytes")
    return data


def index_base(folder_name: str, rel: str) -> int:
    """How many folders up from index.txt's folder an index entry is relative to.

    EN key servers publish `<root>/index.txt` listing `<root>/<start>-<end>-<n>.zip`, relative
    to the folder above `<root>`; simpler folders list paths relative to index.txt itself."""
    first = rel.split("/", 1)[0]
    return 1 if "/" in rel and first == folder_name else 0


def fetch_url(url: str, cache_dir: Path) -> list[Path]:
    """Download the batches an index lists, skipping those already in the cache.

    `url` is a key server's index.txt or the folder that holds it."""
    if not url.endswith(".txt"):
        url = url.rstrip("/") + "/index.txt"
    index = _get(url).decode("utf-8", "replace")
    folder_url = url.rsplit("/", 1)[0]
    folder_name = folder_url.rsplit("/", 1)[-1]
    base = folder_url + "/"
    site = hashlib.sha256(base.encode()).hexdigest()[:16]
    folder = cache_dir / site
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for rel in export.read_index(index):
        if rel.startswith("/") or ".." in rel.split("/"):
            raise InputError(f"{url}: index lists an unsafe path")
        local = folder / rel
        if not local.exists():
            up = "../" * index_base(folder_name, rel)
            data = _get(urllib.parse.urljoin(base, up + rel))
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(local.name + ".part")
            tmp.write_bytes(data)
            tmp.replace(local)
        paths.append(local)
    return paths


def expand(source: str, cache_dir: Path | None) -> list[Path]:
    if source.startswith(("http://", "https://")):
        return fetch_url(source, cache_dir or default_cache())
    p = Path(source)
    if p.is_dir():
        index = p / "index.txt"
        if index.exists():
            return [
                (p.parent if index_base(p.resolve().name, rel) else p) / rel
                for rel in export.read_index(index.read_text())
            ]
        found = sorted(p.rglob("*.zip"))
        if not found:
            raise InputError(f"{p}: folder has no index.txt and no batch zips")
        return found
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    return [p]


def collect_batches(
    sources: Sequence[str],
    *,
    pubkeys: Sequence = (),
    allow_unsigned: bool = False,
    cache_dir: str | Path | None = None,
) -> list[export.ExportBatch]:
    keys = [export.load_public_key(k) if isinstance(k, (str, Path)) else k for k in pubkeys]
    cache = Path(cache_dir) if cache_dir else None
    out = []
    for s in sources:
        for path in expand(s, cache):
            out.append(export.load_batch(path, pubkeys=keys, allow_unsigned=allow_unsigned))
    return out
