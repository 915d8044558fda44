# The badge's own EN derivation against the official v1.2 vectors (all 144 intervals).
import json

import pytest

from pathlib import Path

VECTORS = Path(__file__).resolve().parents[2] / "tests" / "data" / "gaen-v1.2.json"

V = json.loads(VECTORS.read_text())


def test_keys_match_vectors(fw):
    tek = bytes.fromhex(V["tek"])
    assert fw.crypto.rpik(tek).hex() == V["rpik"]
    assert fw.crypto.aemk(tek).hex() == V["aemk"]


def test_all_144_intervals(fw):
    tek = bytes.fromhex(V["tek"])
    d = fw.crypto.Deriver(tek, fw.aes)
    meta = fw.crypto.metadata(8)
    assert meta.hex() == V["metadata"]
    assert len(V["intervals"]) == 144
    for iv in V["intervals"]:
        assert fw.crypto.padded_data(iv["enin"]).hex() == iv["padded_data"]
        rpi = d.rpi(iv["enin"])
        assert rpi.hex() == iv["rpi"], iv["enin"]
        assert d.aem(rpi, meta).hex() == iv["aem"], iv["enin"]


def test_advert_matches_vector(fw):
    iv = V["intervals"][0]
    adv = fw.advert.build(bytes.fromhex(iv["rpi"]), bytes.fromhex(iv["aem"]))
    assert bytes(adv).hex() == V["advertisement_interval_0"]
    assert fw.advert.find_en(adv) == 11


def test_hmac_rfc4231(fw):
    # RFC 4231 test case 2 and case 6 (key longer than the block).
    assert fw.crypto.hmac_sha256(b"Jefe", b"what do ya want for nothing?").hex() == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert fw.crypto.hmac_sha256(b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First").hex() == (
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")


def test_hkdf_rfc5869_case1(fw):
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    assert fw.crypto.hkdf_sha256(ikm, salt, info, 42).hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


@pytest.mark.parametrize("info", [b"EN-RPIK\x00", b"EN-RPI"])
def test_wrong_info_gives_wrong_key(fw, info):
    # Negative vectors: the known ESP32 bugs (NUL-terminated info, wrong label) must not match.
    tek = bytes.fromhex(V["tek"])
    assert fw.crypto.hkdf_sha256(tek, None, info, 16).hex() != V["rpik"]


def test_big_endian_enin_is_wrong(fw):
    tek = bytes.fromhex(V["tek"])
    d = fw.crypto.Deriver(tek, fw.aes)
    enin = V["intervals"][1]["enin"]
    swapped = int.from_bytes(enin.to_bytes(4, "little"), "big")
    assert d.rpi(swapped).hex() != V["intervals"][1]["rpi"]
