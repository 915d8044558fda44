"""A small Exposure Notification key server for pilot deployments.

- `store.KeyServer`: the key server's folder (SQLite state, signing key, published tree):
  one-time verification codes, accepted uploads, publishing signed batches + index.txt.
- `server`: HTTP on loopback (static export tree + `POST /v1/upload`).
- `chain`: the hash chain that links each published batch to the one before it.
- `client`: follow a key server by URL (download only new batches, verify the chain) and
  upload diagnosis keys with a verification code.
- `cli`: `tracecode keyserver init|issue-code|serve|publish|status`.

Layout and chain format: docs/keyserver.md.
"""

from __future__ import annotations

from .store import KeyServer, UploadKey

__all__ = ["KeyServer", "UploadKey"]
