"""Export batches: the real signed example, round trips, and every kind of bad input."""

import io
import zipfile

import pytest

from tracecode import export
from tracecode.errors import InputError, SignatureError
from tracecode.proto import export_pb2 as pb


def _zip(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _entries(path):
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def test_real_example_verifies_and_lists_its_keys(server_example):
    b = export.load_batch(server_example["zip"], pubkeys=[server_example["pubkey"]])
    assert b.signature == "valid"
    assert b.region == "US" and b.batch_num == 1 and b.batch_size == 1
    import base64

    want = {
        (base64.b64decode(k["key"]), k["rollingStartNumber"], k["rollingPeriod"], k["transmissionRisk"])
        for k in server_example["keys"]
    }
    got = {(k.key_data, k.rolling_start_interval_number, k.rolling_period, k.transmission_risk_level) for k in b.keys}
    assert got == want


def test_real_example_without_key_is_unchecked(server_example):
    assert export.load_batch(server_example["zip"]).signature == "unchecked"


@pytest.mark.parametrize("offset", [16, 40, 100, -5])
def test_flipped_byte_in_export_bin_fails_signature(server_example, tmp_path, offset):
    entries = _entries(server_example["zip"])
    data = bytearray(entries["export.bin"])
    data[offset] ^= 0x01
    entries["export.bin"] = bytes(data)
    bad = tmp_path / "forged.zip"
    bad.write_bytes(_zip(entries))
    # A flipped byte may also break the protobuf; either way the batch must be refused.
    with pytest.raises((SignatureError, InputError)):
        export.load_batch(bad, pubkeys=[server_example["pubkey"]])


def test_flipped_signature_byte_is_invalid(server_example, tmp_path):
    entries = _entries(server_example["zip"])
    sigs = pb.TEKSignatureList.FromString(entries["export.sig"])
    s = bytearray(sigs.signatures[0].signature)
    s[-3] ^= 0x40
    sigs.signatures[0].signature = bytes(s)
    entries["export.sig"] = sigs.SerializeToString()
    bad = tmp_path / "badsig.zip"
    bad.write_bytes(_zip(entries))
    with pytest.raises(SignatureError, match="does not verify"):
        export.load_batch(bad, pubkeys=[server_example["pubkey"]])
    # Even with --allow-unsigned an invalid signature is never accepted.
    with pytest.raises(SignatureError):
        export.load_batch(bad, pubkeys=[server_example["pubkey"]], allow_unsigned=True)
    assert export.load_batch(bad, pubkeys=[server_example["pubkey"]], strict=False).signature == "invalid"


def test_wrong_public_key_is_invalid(server_example, tmp_path):
    _, pub = export.generate_signing_key(tmp_path)
    with pytest.raises(SignatureError):
        export.load_batch(server_example["zip"], pubkeys=[pub])


def test_write_then_read_roundtrip(tmp_path):
    priv, pub = export.generate_signing_key(tmp_path / "keys")
    keys = [
        export.DiagnosisKey(bytes(range(16)), 2650000, 144, 1, 3, 2),
        export.DiagnosisKey(bytes(16), 2650144, 50, 5, 0, -3),
        export.DiagnosisKey(b"\xff" * 16, 2650288),
    ]
    path = export.write_batch(
        tmp_path / "out" / "b.zip", keys, signing_key=priv, start_timestamp=1, end_timestamp=2, region="XX"
    )
    b = export.load_batch(path, pubkeys=[pub])
    assert b.signature == "valid"
    assert b.keys == keys
    assert b.region == "XX"


def test_default_rolling_period_applies(tmp_path):
    msg = pb.TemporaryExposureKeyExport(start_timestamp=1, end_timestamp=2)
    k = msg.keys.add()
    k.key_data = bytes(16)
    k.rolling_start_interval_number = 2650000
    p = tmp_path / "export.bin"
    p.write_bytes(export.HEADER + msg.SerializeToString())
    b = export.load_batch(p, allow_unsigned=True)
    assert b.keys[0].rolling_period == 144
    assert b.signature == "unsigned"


def test_unknown_fields_are_skipped(tmp_path):
    msg = pb.TemporaryExposureKeyExport(start_timestamp=1, end_timestamp=2)
    k = msg.keys.add()
    k.key_data = bytes(16)
    k.rolling_start_interval_number = 2650000
    # Field 15 (varint) on the export and old string fields 1/2 on a SignatureInfo.
    body = msg.SerializeToString() + bytes([15 << 3 | 0, 7])
    si = b"\x0a\x03abc\x12\x01x" + pb.SignatureInfo(signature_algorithm="1.2.840.10045.4.3.2").SerializeToString()
    body += b"\x32" + bytes([len(si)]) + si
    p = tmp_path / "export.bin"
    p.write_bytes(export.HEADER + body)
    b = export.load_batch(p, allow_unsigned=True)
    assert len(b.keys) == 1 and b.signature_infos[0]["signature_algorithm"] == "1.2.840.10045.4.3.2"


def _bin_with_key(tmp_path, **fields):
    msg = pb.TemporaryExposureKeyExport(start_timestamp=1, end_timestamp=2)
    k = msg.keys.add()
    k.key_data = fields.pop("key_data", bytes(16))
    k.rolling_start_interval_number = 2650000
    for name, v in fields.items():
        setattr(k, name, v)
    p = tmp_path / "export.bin"
    p.write_bytes(export.HEADER + msg.SerializeToString())
    return p


@pytest.mark.parametrize("size", [0, 15, 17])
def test_key_data_not_16_bytes(tmp_path, size):
    p = _bin_with_key(tmp_path, key_data=bytes(size))
    with pytest.raises(InputError, match="key_data"):
        export.load_batch(p, allow_unsigned=True)


@pytest.mark.parametrize("period", [0, 145, -1])
def test_rolling_period_out_of_range(tmp_path, period):
    p = _bin_with_key(tmp_path, rolling_period=period)
    with pytest.raises(InputError, match="rolling_period"):
        export.load_batch(p, allow_unsigned=True)


def test_truncated_zip(server_example, tmp_path):
    raw = server_example["zip"].read_bytes()
    p = tmp_path / "trunc.zip"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="trunc.zip"):
        export.load_batch(p)


def test_not_a_zip(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, this is not an export")
    with pytest.raises(InputError, match="neither a batch zip"):
        export.load_batch(p)


def test_wrong_header(tmp_path):
    p = tmp_path / "export.bin"
    p.write_bytes(b"EK Export v2    " + b"\x00" * 10)
    with pytest.raises(InputError):
        export.load_batch(p, allow_unsigned=True)
    q = tmp_path / "b.zip"
    q.write_bytes(_zip({"export.bin": b"XX Export v1    "}))
    with pytest.raises(InputError, match="header"):
        export.load_batch(q, allow_unsigned=True)


def test_undecodable_protobuf(tmp_path):
    p = tmp_path / "export.bin"
    p.write_bytes(export.HEADER + b"\x3a\xff\xff\xff\x0f\x01")  # keys field, length far past the end
    with pytest.raises(InputError, match="decodable"):
        export.load_batch(p, allow_unsigned=True)


def test_absurdly_large_file(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "MAX_FILE_BYTES", 1000)
    p = tmp_path / "huge.bin"
    p.write_bytes(export.HEADER + bytes(2000))
    with pytest.raises(InputError, match="limit"):
        export.load_batch(p, allow_unsigned=True)


def test_zip_bomb_entry_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "MAX_ENTRY_BYTES", 10_000)
    p = tmp_path / "bomb.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("export.bin", export.HEADER + bytes(1_000_000))
    p.write_bytes(buf.getvalue())
    with pytest.raises(InputError, match="limit"):
        export.load_batch(p, allow_unsigned=True)


def test_unsigned_needs_allow_when_key_configured(server_example, tmp_path):
    entries = _entries(server_example["zip"])
    bare = tmp_path / "export.bin"
    bare.write_bytes(entries["export.bin"])
    with pytest.raises(SignatureError, match="allow-unsigned"):
        export.load_batch(bare, pubkeys=[server_example["pubkey"]])
    assert export.load_batch(bare, pubkeys=[server_example["pubkey"]], allow_unsigned=True).signature == "unsigned"
    nosig = tmp_path / "nosig.zip"
    nosig.write_bytes(_zip({"export.bin": entries["export.bin"]}))
    with pytest.raises(SignatureError):
        export.load_batch(nosig, pubkeys=[server_example["pubkey"]])


def test_index_has_no_trailing_newline(tmp_path):
    export.write_index(tmp_path, ["a/1-2-00001.zip", "a/2-3-00001.zip"])
    assert (tmp_path / "index.txt").read_bytes() == b"a/1-2-00001.zip\na/2-3-00001.zip"
