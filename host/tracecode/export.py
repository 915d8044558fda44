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
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError

from .errors import InputError, SignatureError
from .proto import export_pb2 as pb

HEADER = b"EK Export v1".ljust(16, b" ")
SIGNATURE_ALGORITHM = "1.2.840.10045.4.3.2"  # ECDSA with SHA-256
MAX_FILE_BYTES = 64 * 1024 * 1024  # the largest national daily files are a few MB
MAX_ENTRY_BYTES = 64 * 1024 * 1024

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
    keys: list[DiagnosisKey]
    revised_keys: list[DiagnosisKey]
    signature: str  # "valid" | "invalid" | "unsigned" | "unchecked"
    signatures_present: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.export_bin).hexdigest()

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
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    if size > MAX_FILE_BYTES:
        raise InputError(f"{path}: file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
    return path.read_bytes()


def _zip_entry(zf: zipfile.ZipFile, name: str, source: str) -> bytes | None:
    try:
        info = zf.getinfo(name)
    except KeyError:
        return None
    if info.file_size > MAX_ENTRY_BYTES:
        raise InputError(f"{source}: {name} unpacks to {info.file_size} bytes, over the limit")
    try:
        with zf.open(info) as fh:
            data = fh.read(MAX_ENTRY_BYTES + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise InputError(f"{source}: {name} is damaged ({exc})") from None
    if len(data) > MAX_ENTRY_BYTES:
        raise InputError(f"{source}: {name} unpacks past the size limit")
    return data


def _convert_key(k: "pb.TemporaryExposureKey", where: str) -> DiagnosisKey:
    key = DiagnosisKey(
        key_data=bytes(k.key_data),
        rolling_start_interval_number=k.rolling_start_interval_number,
        rolling_period=k.rolling_period,  # proto2 default: 144 when absent
        report_type=k.report_type,
        transmission_risk_level=k.transmission_risk_level,
        days_since_onset_of_symptoms=(
            k.days_since_onset_of_symptoms if k.HasField("days_since_onset_of_symptoms") else None
        ),
    )
    if not k.HasField("key_data"):
        raise InputError(f"{where}: key_data is missing")
    if not k.HasField("rolling_start_interval_number"):
        raise InputError(f"{where}: rolling_start_interval_number is missing")
    key.validate(where)
    return key


def parse_export_bin(data: bytes, source: str) -> pb.TemporaryExposureKeyExport:
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


def _verify(export_bin: bytes, sig_bytes: bytes, pubkeys: Sequence, source: str) -> bool:
    sig_list = pb.TEKSignatureList()
    try:
        sig_list.ParseFromString(sig_bytes)
    except (DecodeError, RuntimeError, ValueError):
        raise SignatureError(f"{source}: export.sig is not a decodable TEKSignatureList") from None
    if not sig_list.signatures:
        raise SignatureError(f"{source}: export.sig holds no signature")
    for sig in sig_list.signatures:
        alg = sig.signature_info.signature_algorithm
        if alg and alg != SIGNATURE_ALGORITHM:
            continue
        for pub in pubkeys:
            try:
                pub.verify(sig.signature, export_bin, ec.ECDSA(hashes.SHA256()))
                return True
            except (InvalidSignature, ValueError):
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
    """
    path = Path(path)
    source = str(path)
    keys = [load_public_key(k) if isinstance(k, (str, Path)) else k for k in pubkeys]
    raw = _read_limited(path)
    sig_bytes: bytes | None = None
    if raw[:4] == b"PK\x03\x04" or zipfile.is_zipfile(io.BytesIO(raw)):
        try:
            zf = zipfile.ZipFile(io.BytesIO(raw))
        except (zipfile.BadZipFile, OSError, ValueError):
            raise InputError(f"{source}: not a readable zip file (truncated or corrupt)") from None
        with zf:
            export_bin = _zip_entry(zf, "export.bin", source)
            if export_bin is None:
                raise InputError(f"{source}: the zip has no export.bin entry")
            sig_bytes = _zip_entry(zf, "export.sig", source)
    elif raw[: len(HEADER)] == HEADER:
        export_bin = raw
    elif raw[:2] == b"PK":
        raise InputError(f"{source}: not a readable zip file (truncated or corrupt)")
    else:
        raise InputError(f"{source}: neither a batch zip nor an export.bin with the 'EK Export v1' header")

    msg = parse_export_bin(export_bin, source)

    if sig_bytes is None:
        status = "unsigned"
        if keys and not allow_unsigned:
            raise SignatureError(
                f"{source}: unsigned (no export.sig) while a public key is configured;"
                " pass --allow-unsigned to accept unsigned files"
            )
    elif not keys:
        status = "unchecked"
    elif _verify(export_bin, sig_bytes, keys, source):
        status = "valid"
    else:
        status = "invalid"
        if strict:
            raise SignatureError(f"{source}: signature does not verify with the configured public key(s)")

    keys_out = [_convert_key(k, f"{source}: keys[{i}]") for i, k in enumerate(msg.keys)]
    revised = [_convert_key(k, f"{source}: revised_keys[{i}]") for i, k in enumerate(msg.revised_keys)]
    infos = [
        {
            "verification_key_version": si.verification_key_version,
            "verification_key_id": si.verification_key_id,
            "signature_algorithm": si.signature_algorithm,
        }
        for si in msg.signature_infos
    ]
    return ExportBatch(
        source=source,
        export_bin=export_bin,
        start_timestamp=msg.start_timestamp,
        end_timestamp=msg.end_timestamp,
        region=msg.region,
        batch_num=msg.batch_num,
        batch_size=msg.batch_size,
        signature_infos=infos,
        keys=keys_out,
        revised_keys=revised,
        signature=status,
        signatures_present=0 if sig_bytes is None else 1,
    )


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
