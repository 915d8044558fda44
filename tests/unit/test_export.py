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


# ------------------------------------------------------------------ the error contract (issue 14)

import json as _json
import os as _os
import resource as _resource
import subprocess as _subprocess
import sys as _sys
import time as _time
from pathlib import Path as _Path

from tracecode import native as _native

_ROOT = _Path(__file__).resolve().parents[2]


def _cli(*args):
    return _subprocess.run([_sys.executable, "-m", "tracecode", *map(str, args)], capture_output=True, text=True,
                           timeout=120)


def _one_line_error(p, code):
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == code, p.stderr
    assert "Traceback" not in p.stderr
    assert len(lines) == 1 and lines[0].startswith("tracecode: error: "), p.stderr


def _signed_zip(server_example, body, method=zipfile.ZIP_DEFLATED, sig=None):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr("export.bin", body)
        zf.writestr("export.sig", sig if sig is not None else _entries(server_example["zip"])["export.sig"])
    return buf.getvalue()


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_corrupt_or_unsupported_compression_is_an_input_error(server_example, tmp_path, method):
    body = _entries(server_example["zip"])["export.bin"] * 3
    raw = bytearray(_signed_zip(server_example, body, method))
    p = tmp_path / "c.zip"
    if method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        # a method this reader refuses: say so, exit 2
        raw[8:10] = (12 if method == zipfile.ZIP_STORED else 99).to_bytes(2, "little")
        raw_cd = raw.find(b"PK\x01\x02")
        raw[raw_cd + 10 : raw_cd + 12] = raw[8:10]
    else:
        # the compressed data damaged (bzip2 and lzma are refused before decoding anyway)
        raw[40:60] = bytes(20)
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError):
        export.load_batch(p, pubkeys=[server_example["pubkey"]])


def test_corrupt_deflate_stream_is_an_input_error(server_example, tmp_path):
    body = _entries(server_example["zip"])["export.bin"]
    raw = bytearray(_signed_zip(server_example, body))
    start = 30 + len("export.bin")
    raw[start : start + 6] = b"\xff\xff\xff\xff\xff\xff"  # invalid deflate block type
    p = tmp_path / "d.zip"
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="damaged"):
        export.load_batch(p, allow_unsigned=True)


def test_encrypted_entry_is_an_input_error(server_example, tmp_path):
    raw = bytearray(server_example["zip"].read_bytes())
    for magic, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = raw.find(magic)
        raw[i + off] |= 1
    p = tmp_path / "e.zip"
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="encrypted"):
        export.load_batch(p)


def _raw_export(header_items=b"", keys=()):
    return export.HEADER + header_items + b"".join(b"\x3a" + bytes([len(k)]) + k for k in keys)


def _key_msg(tek, start=2_900_160, period=144):
    def v(x):
        out = bytearray()
        while True:
            b, x = x & 0x7F, x >> 7
            out.append(b | (0x80 if x else 0))
            if not x:
                return bytes(out)
    return b"\x0a\x10" + tek + b"\x18" + v(start) + b"\x20" + v(period)


def test_huge_timestamps_are_shown_not_crashed(tmp_path):
    p = tmp_path / "t.bin"
    p.write_bytes(_raw_export(b"\x09" + b"\xff" * 8 + b"\x11" + b"\xff" * 8, [_key_msg(bytes(16))]))
    b = export.load_batch(p, allow_unsigned=True)
    assert b.start_timestamp == 2**64 - 1
    r = _cli("export", "inspect", p)
    assert r.returncode == 0 and "not a date" in r.stdout, r.stderr
    r = _cli("export", "inspect", "--json", p)
    assert r.returncode == 0 and _json.loads(r.stdout)["start_timestamp"] == 2**64 - 1


def test_non_utf8_region_is_an_input_error_exit_2(tmp_path):
    p = tmp_path / "r.bin"
    p.write_bytes(_raw_export(b"\x1a\x02\xff\xfe", [_key_msg(bytes(16))]))
    with pytest.raises(InputError, match="region is not UTF-8"):
        export.load_batch(p, allow_unsigned=True)
    _one_line_error(_cli("export", "inspect", "--json", p), 2)


def test_wrong_wire_types_and_bad_keys_are_input_errors_in_both_walkers(tmp_path):
    cases = {
        b"\x38\x05": "wire type 0",  # keys as a varint
        b"\x3a\x05\x0a\x03abc": "key_data is 3 bytes",
        b"\x3a\x12" + b"\x0a\x10" + bytes(16): "rolling_start_interval_number is missing",
        b"\x3a\x02\x18\x01": "key_data is missing",
        b"\x3a\x16" + _key_msg(bytes(16))[:18] + b"\x18\x01\x20\x00": "rolling_period 0",
        b"\x3a\x20" + _key_msg(bytes(16)): "truncated or corrupt field 7",
        b"\x0b": "truncated or corrupt field 1",  # a group start
        b"\x80": "corrupt field tag",
    }
    for body, msg in cases.items():
        data = export.HEADER + body
        for use in ([True, False] if _native.walker() else [False]):
            with pytest.raises(InputError, match=msg):
                export.walk_export(data, "x", len(export.HEADER), use_native=use)


def test_native_and_python_walkers_give_the_same_columns(server_example):
    if not _native.walker():
        pytest.skip("native walker not built")
    rng = __import__("random").Random(3)
    keys = [export.DiagnosisKey(rng.randbytes(16), 2_900_000 + rng.randrange(3000), rng.randint(1, 144),
                                rng.randrange(6), rng.randrange(-5, 8), rng.choice([None, -14, 0, 7]))
            for _ in range(300)]
    data = export.build_export_bin(keys[:200], start_timestamp=1, end_timestamp=2, revised_keys=keys[200:])
    a = export.walk_export(data, "x", 16, use_native=True)
    b = export.walk_export(data, "x", 16, use_native=False)
    assert a[0] == b[0]
    for ca, cb in zip(a[1:], b[1:]):
        assert ca.to_keys() == cb.to_keys()
    assert a[1].to_keys() == keys[:200] and a[2].to_keys() == keys[200:]


def test_many_wrong_signatures_are_refused_quickly(server_example, tmp_path):
    """50,000 well-formed wrong signatures (a 79 KB zip once took 54 s): refused in well under a second."""
    one = pb.TEKSignatureList()
    s = one.signatures.add()
    s.signature_info.signature_algorithm = export.SIGNATURE_ALGORITHM
    s.signature = bytes.fromhex("3044022012" + "00" * 31 + "022034" + "00" * 31)
    sig = one.SerializeToString() * 50_000
    body = _entries(server_example["zip"])["export.bin"]
    p = tmp_path / "sigs.zip"
    p.write_bytes(_signed_zip(server_example, body, sig=sig))
    t = _time.perf_counter()
    with pytest.raises(SignatureError):
        export.load_batch(p, pubkeys=[server_example["pubkey"]])
    assert _time.perf_counter() - t < 1.0
    # just over the count cap, small enough for the size cap: refused by count
    p2 = tmp_path / "sigs17.zip"
    p2.write_bytes(_signed_zip(server_example, body, sig=one.SerializeToString() * (export.MAX_SIGNATURES + 1)))
    with pytest.raises(SignatureError, match="more than"):
        export.load_batch(p2, pubkeys=[server_example["pubkey"]])
    # the real signature after 16 wrong ones is not even looked at (bounded work, documented)
    real = _entries(server_example["zip"])["export.sig"]
    p3 = tmp_path / "sigs16.zip"
    p3.write_bytes(_signed_zip(server_example, body, sig=one.SerializeToString() * 15 + real))
    assert export.load_batch(p3, pubkeys=[server_example["pubkey"]]).signature == "valid"


def test_key_bomb_is_refused_fast_and_small(tmp_path):
    """A small zip claiming more keys than a batch may hold is refused before any key is read."""
    n = export.MAX_KEYS_PER_BATCH + 1
    msg = b"\x3a" + bytes([len(_key_msg(bytes(16)))]) + _key_msg(bytes(16))
    p = tmp_path / "bomb.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("export.bin", export.HEADER + msg * n)
    p.write_bytes(buf.getvalue())
    assert p.stat().st_size < 200_000
    before = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss
    t = _time.perf_counter()
    with pytest.raises(InputError, match="over the limit"):
        export.load_batch(p, allow_unsigned=True)
    assert _time.perf_counter() - t < 2.0
    grown_mb = (_resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 120  # the unpacked export.bin (~20 MB) and the zip, no per-key objects


def test_inspect_json_always_parses_and_bad_files_are_one_line(server_example, tmp_path):
    r = _cli("export", "inspect", "--json", server_example["zip"])
    assert r.returncode == 0 and _json.loads(r.stdout)["region"] == "US"
    bad = tmp_path / "bad.zip"
    bad.write_bytes(server_example["zip"].read_bytes()[:-30])
    _one_line_error(_cli("export", "inspect", "--json", bad), 2)
    _one_line_error(_cli("export", "inspect", "--pubkey", server_example["pubkey"], bad), 2)


def test_match_refuses_signed_batches_it_cannot_verify(server_example, tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text("time,rpi,aem,rssi\n1600000000," + "00" * 16 + ",00000000,-60\n")
    r = _cli("match", "--exports", server_example["zip"], "--sightings", csv)
    _one_line_error(r, 3)
    assert "--allow-unchecked" in r.stderr and "--pubkey" in r.stderr
    r = _cli("match", "--exports", server_example["zip"], "--sightings", csv, "--allow-unchecked", "--json")
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and _json.loads(r.stdout)["batches"][0]["signature"] == "unchecked"
    r = _cli("match", "--help")
    from tracecode.scoring import ScoringConfig
    assert ",".join(map(str, ScoringConfig().thresholds_db)) in " ".join(r.stdout.split())


def test_fuzz_slice_fixed_seed_no_unexpected_exceptions():
    """CI slice of tools/fuzz_export.py: 20,000 fixed-seed library inputs and 30 CLI runs."""
    _sys.path.insert(0, str(_ROOT / "tools"))
    import fuzz_export

    import multiprocessing
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(fuzz_export._campaign_star, [(10_000, 20260 + i, 0) for i in range(2)])
    unexpected = {}
    for r in results:
        unexpected.update(r["unexpected"])
    counts = {k: sum(r["counts"].get(k, 0) for r in results) for k in ("ok", "input", "signature", "unexpected")}
    assert sum(counts.values()) == 20_000
    assert counts["ok"] > 1000 and counts["input"] > 1000 and counts["signature"] > 100  # the slice reaches all paths
    assert counts["unexpected"] == 0, unexpected
    assert max(r["slowest_s"] for r in results) < 2.0
    c = fuzz_export.cli_runs(30, 7)
    assert not c["problems"], c["problems"]
    assert set(c["exit_codes"]) <= {0, 2, 3} and len(c["exit_codes"]) >= 2
