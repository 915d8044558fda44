"""Where diagnosis-key batches come from: files, folders with index.txt, key-server URLs.

A URL is followed with the key-server client (`tracecode.keyserver.client`): only batches not
fetched before are downloaded, each is verified (EN signature and the server's hash chain)
before it is kept, and a removed or altered batch is an error. A plain EN server that publishes
no chain records is followed with `chain=False` (signatures are still verified).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

from . import export
from .errors import InputError
from .keyserver import client


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tracecode" / "exports"


def index_base(folder_name: str, rel: str) -> int:
    """How many folders up from index.txt's folder an index entry is relative to.

    EN key servers publish `<root>/index.txt` listing `<root>/<start>-<end>-<n>.zip`, relative
    to the folder above `<root>`; simpler folders list paths relative to index.txt itself."""
    first = rel.split("/", 1)[0]
    return 1 if "/" in rel and first == folder_name else 0


def fetch_plain(url: str, cache_dir: Path) -> list[Path]:
    """Every batch an EN server's index lists, downloading those not in the cache yet."""
    index_url = client.index_url_of(url)
    folder = cache_dir / "plain" / hashlib.sha256(index_url.encode()).hexdigest()[:16]
    paths = []
    for rel in client.parse_index(client._get(index_url, client.MAX_INDEX_BYTES)):
        local = folder / rel
        if not local.exists():
            data = client._get(client._entry_url(index_url, rel), client.MAX_BATCH_BYTES)
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(local.name + ".part")
            tmp.write_bytes(data)
            tmp.replace(local)
        paths.append(local)
    return paths


def expand(source: str, cache_dir: Path | None, pubkeys: Sequence, chain: bool = True) -> list[Path]:
    if source.startswith(("http://", "https://")):
        cache = cache_dir or default_cache()
        if not chain:
            return fetch_plain(source, cache)
        if not pubkeys:
            raise InputError(f"{source}: following a key server needs its public key (--pubkey)")
        client.fetch_new_batches(source, cache, pubkeys)
        return client.cached_batches(cache, source)
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
    chain: bool = True,
) -> list[export.ExportBatch]:
    keys = [export.load_public_key(k) if isinstance(k, (str, Path)) else k for k in pubkeys]
    cache = Path(cache_dir) if cache_dir else None
    out = []
    for s in sources:
        for path in expand(s, cache, keys, chain):
            out.append(export.load_batch(path, pubkeys=keys, allow_unsigned=allow_unsigned))
    return out
