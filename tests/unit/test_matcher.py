"""Matcher and scoring on the official vector key plus generated traffic."""

import pytest

from tracecode import en
from tracecode.export import DiagnosisKey
from tracecode.matcher import Sighting, evaluate, match, read_sightings_csv, write_sightings_csv
from tracecode.scoring import ScoringConfig
from tracecode.errors import InputError


@pytest.fixture
def vector_key(vectors):
    return DiagnosisKey(bytes.fromhex(vectors["tek"]), vectors["rolling_start_interval_number"], 144, 1)


def _heard(vectors, i, dt=0, rssi=-60):
    v = vectors["intervals"][i]
    return Sighting(v["enin"] * 600 + dt, bytes.fromhex(v["rpi"]), bytes.fromhex(v["aem"]), rssi)


def noise(n, t0):
    import random

    rng = random.Random(1)
    return [Sighting(t0 + 60 * i, rng.randbytes(16), rng.randbytes(4), -70) for i in range(n)]


def test_vector_sightings_match_with_decrypted_tx_power(vectors, vector_key):
    heard = [_heard(vectors, i) for i in (0, 1, 2)] + noise(50, vectors["intervals"][0]["enin"] * 600)
    got = match([vector_key], heard, jobs=1)
    assert [m.interval for m in got] == [vectors["intervals"][i]["enin"] for i in (0, 1, 2)]
    # The vector metadata says +8 dBm; attenuation = 8 - (-60).
    assert all(m.tx_power == 8 and m.attenuation == 68 for m in got)


def test_time_window_is_plus_minus_12_intervals(vectors, vector_key):
    inside = _heard(vectors, 20, dt=12 * 600 + 599)  # heard in interval enin+12
    outside = _heard(vectors, 21, dt=13 * 600)  # heard in interval enin+13
    early = _heard(vectors, 40, dt=-13 * 600)
    got = match([vector_key], [inside, outside, early], jobs=1)
    assert [m.interval for m in got] == [vectors["intervals"][20]["enin"]]


def test_tx_power_out_of_range_is_rejected(vectors, vector_key):
    tek = bytes.fromhex(vectors["tek"])
    v = vectors["intervals"][3]
    r = bytes.fromhex(v["rpi"])
    forged = en.aem(en.aemk(tek), r, en.encode_metadata(60))  # +60 dBm is not a real radio
    low = en.aem(en.aemk(tek), r, en.encode_metadata(-51))
    edge = en.aem(en.aemk(tek), r, en.encode_metadata(20))
    s = [Sighting(v["enin"] * 600, r, a, -50) for a in (forged, low, edge)]
    got = match([vector_key], s, jobs=1)
    assert [m.tx_power for m in got] == [20]


def test_revoked_and_duplicate_keys(vectors, vector_key):
    heard = [_heard(vectors, i) for i in range(3)]
    dup = [vector_key, vector_key, DiagnosisKey(vector_key.key_data, vector_key.rolling_start_interval_number)]
    assert len(match(dup, heard, jobs=1)) == 3  # counted once, not three times
    revoked = DiagnosisKey(vector_key.key_data, vector_key.rolling_start_interval_number, 144, 5)
    assert match([revoked], heard, jobs=1) == []
    assert match([vector_key], heard, revised_keys=[revoked], jobs=1) == []


def test_short_rolling_period_only_covers_its_intervals(vectors, vector_key):
    short = DiagnosisKey(vector_key.key_data, vector_key.rolling_start_interval_number, 10)
    heard = [_heard(vectors, i) for i in (5, 9, 10, 50)]
    assert [m.interval - short.rolling_start_interval_number for m in match([short], heard, jobs=1)] == [5, 9]


def test_parallel_equals_serial(vectors, vector_key, monkeypatch):
    import random

    from tracecode import matcher

    monkeypatch.setattr(matcher, "CHUNK_KEYS", 64)
    rng = random.Random(3)
    keys = [DiagnosisKey(rng.randbytes(16), vector_key.rolling_start_interval_number) for _ in range(500)]
    keys.insert(321, vector_key)
    heard = [_heard(vectors, i) for i in range(0, 144, 7)] + noise(300, vectors["intervals"][0]["enin"] * 600)
    a = match(keys, heard, jobs=1)
    b = match(keys, heard, jobs=2)
    assert [(m.interval, m.time) for m in a] == [(m.interval, m.time) for m in b]
    assert len(a) == len(range(0, 144, 7))


def test_fifteen_minutes_at_weight_one_scores_900(vectors, vector_key):
    cfg = ScoringConfig(bucket_weights=(1.0, 1.0, 1.0, 1.0))
    # Scans every 60 s for 15 minutes, each standing for 60 s as the logger says.
    base = vectors["intervals"][10]["enin"] * 600
    heard = []
    for i in range(15):
        t = base + 60 * i
        idx = 10 + (60 * i) // 600
        v = vectors["intervals"][idx]
        heard.append(Sighting(t, bytes.fromhex(v["rpi"]), bytes.fromhex(v["aem"]), -40, duration_s=60))
    res = evaluate([vector_key], heard, config=cfg, jobs=1)
    assert len(res.windows) == 1
    assert res.windows[0].score == pytest.approx(900.0)
    assert res.health_code == "red"


def test_windows_split_at_30_minutes_and_buckets(vectors, vector_key):
    base = vectors["intervals"][30]["enin"] * 600
    heard = []
    for i, rssi in enumerate([-20, -40, -60, -90]):
        t = base + 120 * i
        v = vectors["intervals"][30 + (120 * i) // 600]
        heard.append(Sighting(t, bytes.fromhex(v["rpi"]), bytes.fromhex(v["aem"]), rssi))
    v = vectors["intervals"][40]
    heard.append(Sighting(v["enin"] * 600, bytes.fromhex(v["rpi"]), bytes.fromhex(v["aem"]), -40))
    cfg = ScoringConfig(thresholds_db=(30, 50, 70), bucket_weights=(1.5, 1.0, 0.1, 0.0))
    res = evaluate([vector_key], heard, jobs=1, config=cfg)
    assert len(res.windows) == 2
    w = res.windows[0].to_json()
    # tx +8: attenuations 28 (immediate), 48 (near), 68 (medium), 98 (other) with thresholds
    # 30/50/70 and weights 1.5/1.0/0.1/0;
    # first scan of a window stands for 120 s (unknown), later ones for the gap (120 s).
    assert w["attenuations"] == {"immediate": 120, "near": 120, "medium": 120, "other": 120}
    assert w["score"] == pytest.approx(120 * 1.5 + 120 * 1.0 + 120 * 0.1)
    assert res.health_code == "yellow"  # 312 >= 300 but < 900


def test_no_match_is_green(vectors, vector_key):
    res = evaluate([vector_key], noise(100, vectors["intervals"][0]["enin"] * 600), jobs=1)
    assert res.windows == [] and res.health_code == "green"


def test_csv_roundtrip_and_errors(tmp_path, vectors):
    s = [_heard(vectors, i) for i in range(3)]
    p = tmp_path / "s.csv"
    write_sightings_csv(p, s)
    assert read_sightings_csv(p) == s
    bad = tmp_path / "bad.csv"
    bad.write_text("time,rpi,aem,rssi\n1,abcd,00000000,-50\n")
    with pytest.raises(InputError, match="bad.csv:2"):
        read_sightings_csv(bad)
    nohdr = tmp_path / "nohdr.csv"
    nohdr.write_text("a,b\n")
    with pytest.raises(InputError, match="header"):
        read_sightings_csv(nohdr)


def test_evaluate_many_splits_matches_per_log(vectors, vector_key):
    from tracecode.matcher import evaluate_many

    near = [_heard(vectors, i, rssi=-30) for i in range(0, 12)]
    far = [_heard(vectors, 60, rssi=-95)]
    res = evaluate_many([vector_key], {"a": near, "b": far, "c": noise(20, 0)}, jobs=1, diagnosed=["c"])
    assert len(res["a"].matches) == 12 and len(res["b"].matches) == 1 and res["c"].matches == []
    assert res["a"].health_code in ("yellow", "red")
    assert res["b"].health_code == "green"
    assert res["c"].health_code == "red"  # diagnosed wearer
