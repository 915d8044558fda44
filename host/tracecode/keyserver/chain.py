"""Hash chain over published batches (tamper evidence for a key server's history).

Each batch `<root>/<start>-<end>-<NNNNN>.zip` gets a sidecar `<root>/<start>-<end>-<NNNNN>.chain`,
a small JSON document signed with the key server's export signing key:

    {"format": "tracecode-chain-1", "seq": 3, "batch": "<root>/....zip",
     "export_sha256": "<hex of SHA-256 over the batch's export.bin>",
     "prev_batch": "<root>/....zip" | null,
     "prev_export_sha256": "<hex of the previous batch's export.bin, 64 zeros for the first>",
     "signature": "<base64 DER ECDSA P-256 / SHA-256 over the canonical body>"}

The canonical body is the document without "signature", serialized with sorted keys and no
whitespace (`json.dumps(..., sort_keys=True, separators=(",", ":"))`), UTF-8.

The export files themselves stay standard EN (header + TemporaryExposureKeyExport + TEKSignatureList),
so every phone app and `tracecode match` reads them unchanged; the chain is extra data that
only a chain-aware client reads. A client holding the batches in index order checks that
`seq` counts 1, 2, 3, ... with no gap, that every record's `prev_export_sha256` equals the
previous record's `export_sha256`, and that the downloaded export.bin hashes to `export_sha256`.
A removed batch breaks the link of its successor; an altered batch breaks its own hash (and its
EN signature); a rewritten chain record breaks its signature.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import InputError, SignatureError

CHAIN_FORMAT = "tracecode-chain-1"
GENESIS = "0" * 64
_FIELDS = ("format", "seq", "batch", "export_sha256", "prev_batch", "prev_export_sha256")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chain_path_for(batch_relpath: str) -> str:
    """Sidecar path of a batch: the same name with `.chain` in place of `.zip`."""
    if batch_relpath.endswith(".zip"):
        return batch_relpath[: -len(".zip")] + ".chain"
    return batch_relpath + ".chain"


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class ChainRecord:
    seq: int
    batch: str
    export_sha256: str
    prev_batch: str | None
    prev_export_sha256: str
    signature: bytes = b""

    def body(self) -> dict:
        return {
            "format": CHAIN_FORMAT,
            "seq": self.seq,
            "batch": self.batch,
            "export_sha256": self.export_sha256,
            "prev_batch": self.prev_batch,
            "prev_export_sha256": self.prev_export_sha256,
        }

    def signed(self, private_key: ec.EllipticCurvePrivateKey) -> "ChainRecord":
        sig = private_key.sign(_canonical(self.body()), ec.ECDSA(hashes.SHA256()))
        return ChainRecord(self.seq, self.batch, self.export_sha256, self.prev_batch,
                           self.prev_export_sha256, sig)

    def to_json(self) -> bytes:
        doc = self.body()
        doc["signature"] = base64.b64encode(self.signature).decode("ascii")
        return (json.dumps(doc, indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, *, name: str = "chain record") -> "ChainRecord":
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise InputError(f"{name}: not a JSON document") from None
        if not isinstance(doc, dict) or doc.get("format") != CHAIN_FORMAT:
            raise InputError(f"{name}: not a {CHAIN_FORMAT} record")
        try:
            seq = doc["seq"]
            batch = doc["batch"]
            exp = doc["export_sha256"]
            prev_batch = doc["prev_batch"]
            prev = doc["prev_export_sha256"]
            sig = base64.b64decode(doc["signature"], validate=True)
        except (KeyError, ValueError, TypeError):
            raise InputError(f"{name}: missing or malformed field") from None
        if (not isinstance(seq, int) or isinstance(seq, bool) or seq < 1
                or not isinstance(batch, str) or not _is_hex64(exp) or not _is_hex64(prev)
                or not (prev_batch is None or isinstance(prev_batch, str))):
            raise InputError(f"{name}: malformed field")
        return cls(seq, batch, exp, prev_batch, prev, sig)

    def verify(self, public_keys: Iterable[ec.EllipticCurvePublicKey], *, name: str = "chain record") -> None:
        """Raise SignatureError unless one of the keys signed this record."""
        body = _canonical(self.body())
        for key in public_keys:
            try:
                key.verify(self.signature, body, ec.ECDSA(hashes.SHA256()))
                return
            except InvalidSignature:
                continue
        raise SignatureError(f"{name}: chain signature does not verify with the given public key(s)")


def _is_hex64(value) -> bool:
    if not isinstance(value, str) or len(value) != 64:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def check_link(record: ChainRecord, *, expected_seq: int, prev_batch: str | None,
               prev_export_sha256: str) -> None:
    """Raise SignatureError unless `record` directly follows the batch (`prev_batch`, hash)."""
    if record.seq != expected_seq:
        raise SignatureError(
            f"chain broken at {record.batch}: sequence {record.seq}, expected {expected_seq} "
            "(a batch was removed, reordered or inserted)")
    if record.prev_export_sha256 != prev_export_sha256 or record.prev_batch != prev_batch:
        raise SignatureError(
            f"chain broken at {record.batch}: it does not link to the previous batch "
            "(a batch was removed or altered)")
