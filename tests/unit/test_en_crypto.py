"""EN v1.2 crypto against the official test vectors (all 144 intervals)."""

import pytest

from tracecode import en


def test_keys_from_vector_tek(vectors):
    tek = bytes.fromhex(vectors["tek"])
    assert en.rpik(tek).hex() == vectors["rpik"]
    assert en.aemk(tek).hex() == vectors["aemk"]


def test_enin_of_key_generation_time(vectors):
    assert en.enin(vectors["key_generation_unix_seconds"]) == vectors["rolling_start_interval_number"]
    assert en.day_start_enin(vectors["rolling_start_interval_number"] + 77) == vectors["rolling_start_interval_number"]


def test_all_144_intervals(vectors):
    tek = bytes.fromhex(vectors["tek"])
    meta = bytes.fromhex(vectors["metadata"])
    got = en.derive(tek, vectors["rolling_start_interval_number"], vectors["rolling_period"], meta)
    assert len(got) == len(vectors["intervals"]) == 144
    for ids, v in zip(got, vectors["intervals"]):
        assert ids.enin == v["enin"]
        assert en.padded_data(v["enin"]).hex() == v["padded_data"]
        assert ids.rpi.hex() == v["rpi"], v["enin"]
        assert ids.aem.hex() == v["aem"], v["enin"]


def test_single_interval_functions_agree_with_batch(vectors):
    tek = bytes.fromhex(vectors["tek"])
    v = vectors["intervals"][100]
    r = en.rpi(en.rpik(tek), v["enin"])
    assert r.hex() == v["rpi"]
    assert en.aem(en.aemk(tek), r, bytes.fromhex(vectors["metadata"])).hex() == v["aem"]
    # AEM is a stream cipher: applying it twice gives the metadata back.
    assert en.decrypt_aem(en.aemk(tek), r, bytes.fromhex(v["aem"])).hex() == vectors["metadata"]


def test_advertisement_matches_vector(vectors):
    v = vectors["intervals"][0]
    adv = en.advertisement(bytes.fromhex(v["rpi"]), bytes.fromhex(v["aem"]))
    assert len(adv) == 31
    assert adv.hex() == vectors["advertisement_interval_0"]


@pytest.mark.parametrize(
    "wrong_info", [b"EN-RPIK\x00\x01", b"EN-RPI\x01"], ids=["nul-terminated-info", "short-info"]
)
def test_known_implementation_bugs_give_other_keys(vectors, wrong_info):
    # Negative vectors: the bugs protocol.md warns about must not reproduce the official RPIK.
    tek = bytes.fromhex(vectors["tek"])
    assert en._hkdf16(tek, wrong_info).hex() != vectors["rpik"]


def test_big_endian_enin_gives_wrong_rpi(vectors):
    import struct

    tek = bytes.fromhex(vectors["tek"])
    v = vectors["intervals"][5]
    bad = en.aes_ecb(en.rpik(tek), b"EN-RPI" + bytes(6) + struct.pack(">I", v["enin"]))
    assert bad.hex() != v["rpi"]


def test_metadata_v10_roundtrip(vectors):
    meta = bytes.fromhex(vectors["metadata"])
    m = en.decode_metadata(meta)
    assert (m.major, m.minor, m.tx_power_dbm, m.calibration_confidence) == (1, 0, 8, 0)
    assert en.encode_metadata(8) == meta


@pytest.mark.parametrize("tx,cc", [(-30, 0), (0, 3), (20, 2), (-128, 1), (127, 0)])
def test_metadata_v11_roundtrip(tx, cc):
    raw = en.encode_metadata(tx, cc)
    assert raw[0] == 0x50 | (cc << 2)
    m = en.decode_metadata(raw)
    assert (m.major, m.minor, m.tx_power_dbm, m.calibration_confidence) == (1, 1, tx, cc)


def test_bad_lengths_are_rejected():
    with pytest.raises(ValueError):
        en.rpik(b"short")
    with pytest.raises(ValueError):
        en.aem(bytes(16), bytes(16), b"123")
    with pytest.raises(ValueError):
        en.encode_metadata(200)
