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


def _prefix_case(seed=4, n_keys=600, planted=40):
    """Keys with mixed periods and starts, duplicates and a revocation, and sightings of some
    of them (plus noise): the same log with full RPIs and as log v2 keeps it (8-byte prefixes)."""
    import random

    rng = random.Random(seed)
    day = 2_900_160
    keys = []
    for _ in range(n_keys):
        period = rng.choice([144, 144, 144, 72, 10, 1])
        keys.append(DiagnosisKey(rng.randbytes(16), day + 144 * rng.randrange(3) + rng.choice([0, 0, 40]), period,
                                 rng.choice([1, 1, 2, 3])))
    keys += [DiagnosisKey(k.key_data, k.rolling_start_interval_number, 144, 1) for k in keys[:20]]  # duplicates
    revised = [DiagnosisKey(keys[30].key_data, keys[30].rolling_start_interval_number, 144, 5)]
    full = []
    for k in rng.sample(keys[:60], 30) + rng.sample(keys, planted - 30):
        for _ in range(2):
            interval = k.rolling_start_interval_number + rng.randrange(k.rolling_period)
            r = en.rpi(en.rpik(k.key_data), interval)
            a = en.aem(en.aemk(k.key_data), r, en.encode_metadata(rng.choice([-8, 0, 60])))
            full.append(Sighting(interval * 600 + rng.randrange(-7200, 7200), r, a, -rng.randrange(40, 90)))
    full += noise(300, day * 600)
    rng.shuffle(full)
    short = [Sighting(s.time, s.rpi[:8] + bytes(8), s.aem, s.rssi) for s in full]
    return keys, revised, full, short


def _facts(res):
    return ([(m.key.key_data, m.key.report_type, m.interval, m.time, m.tx_power, m.sighting_index)
             for m in res.matches], [w.to_json() for w in res.windows], res.health_code)


def test_prefix_path_equals_full_rpi_path(monkeypatch):
    """Log v2 keeps 8 bytes of each heard RPI (`match --db`): the same keys and sightings give
    the same matches and exposures as with full RPIs, serial or parallel, a few chunks or many."""
    from tracecode import matcher

    keys, revised, full, short = _prefix_case()
    want = _facts(evaluate(keys, full, revised_keys=revised, jobs=1))
    assert len(want[0]) > 40 and want[1]
    assert _facts(evaluate(keys, short, revised_keys=revised, jobs=1)) == want
    monkeypatch.setattr(matcher, "CHUNK_KEYS", 64)
    assert _facts(evaluate(keys, short, revised_keys=revised, jobs=2)) == want
    # a log with both (a badge synced before and after its firmware moved to log v2)
    mixed = [s if i % 2 else f for i, (s, f) in enumerate(zip(short, full))]
    seen = []
    got = evaluate(keys, mixed, revised_keys=revised, jobs=2, progress=lambda d, n: seen.append((d, n)))
    assert _facts(got) == want
    assert seen == sorted(seen) and seen[-1][0] == seen[-1][1]


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


# ------------------------------------------------------------------ duplicates by rule, not order

import itertools
import random as _random

from tracecode import export as _export
from tracecode.matcher import KeyOccurrences, SightingTable

_DAY = 2_900_160  # a day-aligned interval in 2025


def _batches(tmp_path, specs, signing):
    """specs: [(start_timestamp, batch_num, keys, revised)] -> loaded, verified ExportBatches."""
    out = []
    for n, (ts, num, keys, revised) in enumerate(specs):
        p = _export.write_batch(tmp_path / f"b{n}-{ts}-{num}.zip", keys, revised_keys=revised, signing_key=signing[0],
                                start_timestamp=ts, end_timestamp=ts + 86400, batch_num=num)
        out.append(_export.load_batch(p, pubkeys=[signing[1]]))
    return out


@pytest.fixture(scope="module")
def signing(tmp_path_factory):
    priv, pub = _export.generate_signing_key(tmp_path_factory.mktemp("k"))
    return _export.load_private_key(priv), _export.load_public_key(pub)


def _seen(tek, interval, rssi=-60, tx=-8):
    r = en.rpi(en.rpik(tek), interval)
    return Sighting(interval * 600 + 17, r, en.aem(en.aemk(tek), r, en.encode_metadata(tx)), rssi)


def _run(batches, sightings):
    return [(m.key.key_data, m.interval, m.key.report_type, m.key.days_since_onset_of_symptoms, m.sighting_index)
            for m in match(KeyOccurrences.from_batches(batches), sightings, jobs=1)]


def _both_orders(batches, sightings):
    a = _run(batches, sightings)
    b = _run(list(reversed(batches)), sightings)
    assert a == b
    return a


def test_revoked_in_a_later_batch_keys_field_wins_in_any_order(tmp_path, signing):
    tek = bytes(range(16))
    conf = DiagnosisKey(tek, _DAY, 144, 1)
    rev = DiagnosisKey(tek, _DAY, 144, 5)
    s = [_seen(tek, _DAY + 10)]
    assert _both_orders(_batches(tmp_path, [(1000, 1, [conf], []), (2000, 1, [rev], [])], signing), s) == []
    # later in the same batch, in the keys field
    assert _both_orders(_batches(tmp_path, [(3000, 1, [conf, rev], [])], signing), s) == []
    assert _run(_batches(tmp_path, [(3000, 1, [rev, conf], [])], signing), s) == []


def test_revoked_first_then_republished_stays_revoked(tmp_path, signing):
    tek = bytes(range(1, 17))
    s = [_seen(tek, _DAY + 20)]
    bs = _batches(tmp_path, [(1000, 1, [DiagnosisKey(tek, _DAY, 144, 5)], []),
                             (2000, 1, [DiagnosisKey(tek, _DAY, 144, 1)], [])], signing)
    assert _both_orders(bs, s) == []


def test_two_rolling_periods_cover_their_union(tmp_path, signing):
    tek = bytes(range(2, 18))
    s = [_seen(tek, _DAY + 100), _seen(tek, _DAY + 5)]
    bs = _batches(tmp_path, [(1000, 1, [DiagnosisKey(tek, _DAY, 72, 1)], []),
                             (2000, 1, [DiagnosisKey(tek, _DAY, 144, 1)], [])], signing)
    got = _both_orders(bs, s)
    assert sorted(i for _, i, *_ in got) == [_DAY + 5, _DAY + 100]
    # also different starts: [DAY, DAY+72) and [DAY+60, DAY+204) -> union [DAY, DAY+204)
    s2 = [_seen(tek, _DAY + 200), _seen(tek, _DAY + 30)]
    bs2 = _batches(tmp_path, [(1000, 1, [DiagnosisKey(tek, _DAY, 72, 1)], []),
                              (2000, 1, [DiagnosisKey(tek, _DAY + 60, 144, 1)], [])], signing)
    assert sorted(i for _, i, *_ in _both_orders(bs2, s2)) == [_DAY + 30, _DAY + 200]


def test_later_revision_gives_report_type_and_onset(tmp_path, signing):
    tek = bytes(range(3, 19))
    s = [_seen(tek, _DAY + 40)]
    early = DiagnosisKey(tek, _DAY, 144, 3, days_since_onset_of_symptoms=None)
    revised = DiagnosisKey(tek, _DAY, 144, 1, days_since_onset_of_symptoms=2)
    # revised_keys of a later batch
    got = _both_orders(_batches(tmp_path, [(1000, 1, [early], []), (2000, 1, [], [revised])], signing), s)
    assert [(rt, dso) for _, _, rt, dso, _ in got] == [(1, 2)]
    # a later batch number with the same start
    got = _both_orders(_batches(tmp_path, [(1000, 2, [revised], []), (1000, 1, [early], [])], signing), s)
    assert [(rt, dso) for _, _, rt, dso, _ in got] == [(1, 2)]
    # within one batch, revised_keys over keys
    got = _run(_batches(tmp_path, [(1000, 1, [early], [revised])], signing), s)
    assert [(rt, dso) for _, _, rt, dso, _ in got] == [(1, 2)]


def _oracle(specs, sightings):
    """The rule of docs/matching.md written out key by key (independent of the matcher)."""
    occ: dict[bytes, list] = {}
    for ts, num, keys, revised in specs:
        for fld, ks in ((0, keys), (1, revised)):
            for k in ks:
                occ.setdefault(k.key_data, []).append(((ts, num, fld), k))
    out = set()
    for tek, items in occ.items():
        if any(k.report_type == 5 for _, k in items):
            continue
        intervals = set()
        for _, k in items:
            intervals.update(range(k.rolling_start_interval_number, k.rolling_start_interval_number + k.rolling_period))
        latest = max(r for r, _ in items)
        cands = [k for r, k in items if r == latest]
        best = min(cands, key=lambda k: (k.report_type, k.transmission_risk_level,
                                         -10**9 if k.days_since_onset_of_symptoms is None else k.days_since_onset_of_symptoms))
        rk = en.rpik(tek)
        rpis = {en.rpi(rk, i): i for i in intervals}
        for si, s in enumerate(sightings):
            if s.rpi in rpis and abs(en.enin(s.time) - rpis[s.rpi]) <= 12:
                out.add((tek, rpis[s.rpi], best.report_type, best.days_since_onset_of_symptoms, si))
    return out


def test_exposures_do_not_depend_on_batch_or_key_order(tmp_path, signing):
    """Property: shuffled batches and shuffled keys give the same exposures, and those of the
    rule written out independently."""
    rng = _random.Random(2024)
    teks = [rng.randbytes(16) for _ in range(40)]
    specs = []
    for b in range(5):
        keys, revised = [], []
        for tek in rng.sample(teks, 14):
            start = _DAY + 144 * rng.randrange(3) + rng.choice([0, 0, 0, 36, 100])
            k = DiagnosisKey(tek, start, rng.choice([144, 144, 72, 10, 1]), rng.choice([1, 1, 1, 2, 3, 5]),
                             rng.randrange(8), rng.choice([None, 0, 3, -2]))
            (revised if rng.random() < 0.25 else keys).append(k)
        specs.append((1_000_000 + 86400 * rng.randrange(3), 1 + rng.randrange(2), keys, revised))
    sightings = []
    for tek in teks:
        for _ in range(3):
            sightings.append(_seen(tek, _DAY + rng.randrange(3 * 144 + 100)))
    sightings += noise(30, _DAY * 600)
    expected = _oracle(specs, sightings)
    assert len(expected) > 10  # the property is about something
    first = None
    for trial in range(4):
        order = list(range(len(specs)))
        rng.shuffle(order)
        shuffled = []
        for i in order:
            ts, num, keys, revised = specs[i]
            keys, revised = keys[:], revised[:]
            rng.shuffle(keys)
            rng.shuffle(revised)
            shuffled.append((ts, num, keys, revised))
        got = _run(_batches(tmp_path / f"t{trial}", shuffled, signing), sightings)
        assert set(got) == expected
        if first is None:
            first = got
        assert got == first  # the same list, in the same order


def test_sighting_table_and_csv_columns_agree(tmp_path):
    s = noise(20, 1_700_000_000) + [Sighting(5, bytes(16), bytes(4), -1, rssi_max=-3, duration_s=7)]
    t = SightingTable.from_sightings(s)
    assert t.to_sightings() == s
    p = tmp_path / "s.csv"
    p.write_text("time,rpi,aem,rssi,rssi_max,duration_s\n" + "".join(
        f"{x.time},{x.rpi.hex()},{x.aem.hex()},{x.rssi},{'' if x.rssi_max is None else x.rssi_max},"
        f"{'' if x.duration_s is None else x.duration_s}\n" for x in s))
    assert read_sightings_csv(p) == s
    # the row reader (quoted file) gives the same
    q = tmp_path / "q.csv"
    q.write_text(p.read_text().replace(",-1,", ',"-1",'))
    assert read_sightings_csv(q) == s
    bad = tmp_path / "bad.csv"
    bad.write_text(p.read_text().replace(s[3].rpi.hex(), "zz" * 16))
    with pytest.raises(InputError, match=":5:"):
        read_sightings_csv(bad)


def test_vectorised_csv_reader_equals_row_reader(tmp_path):
    from tracecode import matcher as _m
    rng = _random.Random(8)
    rows = []
    for i in range(3000):
        mx = rng.choice(["", str(-rng.randrange(30, 100)), "0"])
        du = rng.choice(["", str(rng.randrange(0, 400))])
        rows.append(f"{rng.randrange(0, 2**40)},{rng.randbytes(16).hex()},{rng.randbytes(4).hex().upper()},"
                    f"{rng.randrange(-120, 10)},{mx},{du}\n")
    p = tmp_path / "s.csv"
    p.write_text("time,rpi,aem,rssi,rssi_max,duration_s\n" + "".join(rows))
    fast = _m.read_sightings_table(p).to_sightings()
    slow = _m._read_sightings_rows(p, p.read_text()).to_sightings()
    assert fast == slow and len(fast) == 3000
    # other column order, no trailing newline
    q = tmp_path / "q.csv"
    q.write_text("rssi,aem,rpi,time\n" + "\n".join(f"{s.rssi},{s.aem.hex()},{s.rpi.hex()},{s.time}" for s in fast[:50]))
    assert [(s.time, s.rpi, s.aem, s.rssi) for s in read_sightings_csv(q)] == [
        (s.time, s.rpi, s.aem, s.rssi) for s in fast[:50]]
    # damage anywhere: the same error as the row reader, naming the line
    for bad_cell, line in ((" 12", 3), ("1e5", 4), ("", 5)):
        lines = p.read_text().splitlines(keepends=True)
        cells = lines[line - 1].split(",")
        cells[0] = bad_cell
        lines[line - 1] = ",".join(cells)
        b = tmp_path / f"b{line}.csv"
        b.write_text("".join(lines))
        if bad_cell == " 12":  # int() accepts surrounding spaces: the row reader reads it
            assert read_sightings_csv(b)[line - 2].time == 12
        else:
            with pytest.raises(InputError, match=f":{line}:"):
                read_sightings_csv(b)
