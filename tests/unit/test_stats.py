"""`tracecode stats`: open statistics from published batches (real example + batches of known composition)."""

from __future__ import annotations

import json
import random
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tracecode import export, stats
from tracecode.cli import main
from tracecode.export import DiagnosisKey

pytestmark = pytest.mark.timeout(120)
DATA = Path(__file__).resolve().parents[1] / "data" / "server-example"
EXAMPLE = DATA / "testExport-2-records-1-of-1.zip"
EXAMPLE_PUB = DATA / "public.pem"
DAY0 = 20_400            # days since 1970 (2025-11-08)
TYPES = (1, 1, 1, 1, 1, 1, 1, 1, 2, 3, 4)


# ---------------------------------------------------------------------------- generated batches


@dataclass
class World:
    """Uploads of known composition, published one batch a day (plus optional duplicates,
    revocations and padding), and the truth to compare the statistics with."""
    folder: Path
    pub: Path
    uploads_per_day: dict[str, int] = field(default_factory=dict)
    new_by_day_type: dict[str, dict[str, int]] = field(default_factory=dict)
    duplicates: int = 0
    revocations: int = 0
    dsos: dict[str, int] = field(default_factory=dict)
    real_keys: int = 0
    published: int = 0


def _iso(day: int) -> str:
    return stats._day(day * 86400)


def make_world(tmp: Path, *, seed: int = 1, days: int = 28, mean_uploads: int = 30, full_share: float = 0.7,
               rotate_share: float = 0.15, today_share: float = 0.4, dup_share: float = 0.0,
               revoke_share: float = 0.0, multiplier: int = 1, future_keys: int = 0,
               floor: int = 0, lag_share: float = 0.0, recent_gap_share: float = 0.0) -> World:
    """`lag_share` of uploads are published a day late (a batch then mixes two upload days);
    `recent_gap_share` of uploads lack their last 1-2 days (phone off, tracing paused)."""
    rng = random.Random(seed)
    folder = tmp / f"world{seed}"
    priv, pub = export.generate_signing_key(tmp / f"keys{seed}")
    w = World(folder, pub)
    rels: list[str] = []
    previous: list[DiagnosisKey] = []
    revoked_later: list[DiagnosisKey] = []
    late: list[list[DiagnosisKey]] = []
    late_types: dict[str, int] = {}
    for t in range(DAY0, DAY0 + days):
        n = max(0, int(rng.gauss(mean_uploads, mean_uploads / 3)))
        keys: list[DiagnosisKey] = []
        new_types: dict[str, int] = dict(late_types)
        published_now = len(late)
        for up in late:
            keys += up
        late, late_types = [], {}
        for _ in range(n):
            rtype = rng.choice(TYPES)
            ndays = 14 if rng.random() < full_share else rng.randint(1, 13)
            onset = rng.randint(-3, 6)       # onset this many days before the upload day
            rotate = rng.randint(t - ndays, t - 1) if rng.random() < rotate_share else None
            gap = rng.randint(1, 2) if rng.random() < recent_gap_share else 0
            is_late = t < DAY0 + days - 1 and rng.random() < lag_share
            mine: list[DiagnosisKey] = []
            for d in range(t - ndays, t - gap):
                dsos = (d - (t - onset))
                dsos = dsos if -14 <= dsos <= 14 else None
                if d == rotate:                 # the phone restarted: two keys that day
                    cut = rng.randint(10, 134)
                    mine.append(DiagnosisKey(rng.randbytes(16), d * 144, cut, rtype, 0, dsos))
                    mine.append(DiagnosisKey(rng.randbytes(16), d * 144 + cut, 144 - cut, rtype, 0, dsos))
                else:
                    mine.append(DiagnosisKey(rng.randbytes(16), d * 144, 144, rtype, 0, dsos))
            if rng.random() < today_share:      # today's key, released early
                mine.append(DiagnosisKey(rng.randbytes(16), t * 144, rng.randint(1, 100), rtype, 0,
                                         onset if -14 <= onset <= 14 else None))
            if not mine:
                mine.append(DiagnosisKey(rng.randbytes(16), t * 144, rng.randint(1, 100), rtype, 0, None))
            types = late_types if is_late else new_types
            for k in mine:
                name = stats.TYPE_NAMES[rtype]
                types[name] = types.get(name, 0) + 1
                key = "absent" if k.days_since_onset_of_symptoms is None else str(k.days_since_onset_of_symptoms)
                w.dsos[key] = w.dsos.get(key, 0) + 1
            w.real_keys += len(mine)
            if is_late:
                late.append(mine)
                continue
            published_now += 1
            keys += mine
            if rng.random() < revoke_share:
                revoked_later += mine
        day = _iso(t + 1)   # published at the end of day t (batch end = t+1 00:00)
        w.uploads_per_day[day] = published_now
        batch = list(keys)
        # duplicates: some keys of the previous batch published again
        dups = [k for k in previous if rng.random() < dup_share]
        batch += dups
        w.duplicates += len(dups)
        # revocations of yesterday's revoked uploads
        if revoked_later:
            rev = [DiagnosisKey(k.key_data, k.rolling_start_interval_number, k.rolling_period, 5, 0,
                                k.days_since_onset_of_symptoms) for k in revoked_later]
            batch += rev
            w.revocations += len(rev)
            new_types["revoked"] = new_types.get("revoked", 0) + len(rev)
            revoked_later = []
        w.new_by_day_type[day] = new_types
        # padding
        if multiplier > 1:
            batch += [DiagnosisKey(rng.randbytes(16), k.rolling_start_interval_number, k.rolling_period,
                                   k.report_type, k.transmission_risk_level, k.days_since_onset_of_symptoms)
                      for k in keys for _ in range(multiplier - 1)]
        for _ in range(future_keys):
            batch.append(DiagnosisKey(rng.randbytes(16), (t + 3) * 144, 144, 1, 0, None))
        while floor and len(batch) < floor:
            src = rng.choice(keys) if keys else DiagnosisKey(b"\0" * 16, t * 144)
            batch.append(DiagnosisKey(rng.randbytes(16), src.rolling_start_interval_number, src.rolling_period,
                                      src.report_type, 0, src.days_since_onset_of_symptoms))
        batch.sort(key=lambda k: k.key_data)
        w.published += len(batch)
        rel = export.batch_name("tc", t * 86400, (t + 1) * 86400)
        export.write_batch(folder / rel, batch, signing_key=priv, start_timestamp=t * 86400,
                           end_timestamp=(t + 1) * 86400, region="TC")
        rels.append(rel)
        previous = keys
    export.write_index(folder, rels)
    return w


def _stats(w: World, *extra: str) -> dict:
    loaded = stats.load_sources([str(w.folder)], pubkeys=[w.pub])
    return stats.compute(loaded.batches, sources=loaded.names)


def _errors(w: World, doc: dict) -> tuple[float, float]:
    """(relative error of the total, mean absolute relative error per day with uploads)."""
    est = doc["estimated_diagnoses"]["by_publication_day"]
    truth = w.uploads_per_day
    total_true = sum(truth.values())
    total_est = sum(est.get(d, 0) for d in truth)
    per_day = [abs(est.get(d, 0) - n) / n for d, n in truth.items() if n]
    return (total_est - total_true) / total_true, sum(per_day) / len(per_day)


# ---------------------------------------------------------------------------- the real example


def test_real_example_batch(capsys):
    assert main(["stats", "--exports", str(EXAMPLE), "--pubkey", str(EXAMPLE_PUB), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["signatures"] == {"valid": 1}
    assert doc["keys"]["distinct"] == 2 and doc["keys"]["duplicates"] == 0
    # the example's keys carry no report type (UNKNOWN) and no days since onset
    assert doc["by_publication_day"] == {"2020-05-23": {"confirmed": 0, "clinical": 0, "self_report": 0,
                                                        "recursive": 0, "revoked": 0, "unknown": 2, "total": 2}}
    assert sorted(doc["by_key_day"]) == ["2020-05-19", "2020-05-20"]
    assert doc["days_since_onset"] == {"absent": 2}
    # two keys on two different days, neither a full day: one uploader at least
    assert doc["estimated_diagnoses"]["by_publication_day"] == {"2020-05-23": 1.0}
    assert doc["padding"]["detected"] is False and "cannot be detected" in doc["padding"]["caveat"]
    # the 114-interval key starting at 2649866 runs past midnight: no EN v1.2 phone makes it
    assert doc["padding"]["irregular_keys"] == 1


def test_signed_batch_without_pubkey_is_refused_unless_allowed(capsys):
    assert main(["stats", "--exports", str(EXAMPLE)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--pubkey" in err and "--allow-unchecked" in err
    assert main(["stats", "--exports", str(EXAMPLE), "--allow-unchecked", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["signatures"] == {"unchecked": 1}


def test_wrong_key_missing_file_and_unsigned(tmp_path, capsys):
    _, other = export.generate_signing_key(tmp_path / "other")
    assert main(["stats", "--exports", str(EXAMPLE), "--pubkey", str(other)]) == 3
    assert main(["stats", "--exports", str(tmp_path / "nope.zip"), "--pubkey", str(EXAMPLE_PUB)]) == 2
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really")
    assert main(["stats", "--exports", str(tmp_path / "junk.zip"), "--pubkey", str(EXAMPLE_PUB)]) == 2
    unsigned = export.write_batch(tmp_path / "u.zip", [DiagnosisKey(b"\1" * 16, DAY0 * 144)], signing_key=None,
                                  start_timestamp=DAY0 * 86400, end_timestamp=(DAY0 + 1) * 86400)
    capsys.readouterr()
    # as `match`: with a public key an unsigned file needs --allow-unsigned; without one it is
    # counted, with a warning on stderr (stdout stays pure JSON)
    assert main(["stats", "--exports", str(unsigned), "--pubkey", str(EXAMPLE_PUB)]) == 3
    assert main(["stats", "--exports", str(unsigned), "--pubkey", str(EXAMPLE_PUB), "--allow-unsigned", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["signatures"] == {"unsigned": 1}
    assert main(["stats", "--exports", str(unsigned), "--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["signatures"] == {"unsigned": 1}
    assert "warning: 1 batches counted without verifying a signature" in cap.err
    err = cap.err
    assert "Traceback" not in err
    assert all(line.startswith("tracecode: ") for line in err.splitlines())


# ---------------------------------------------------------------------------- known composition


def test_counts_match_known_composition(tmp_path):
    w = make_world(tmp_path, seed=3, days=20, dup_share=0.2, revoke_share=0.1)
    doc = _stats(w)
    assert doc["keys"]["duplicates"] == w.duplicates > 0
    assert doc["keys"]["revocations"] == w.revocations > 0
    assert doc["keys"]["distinct"] == w.real_keys
    for day, types in w.new_by_day_type.items():
        row = doc["by_publication_day"][day]
        for t in stats.TYPE_ORDER:
            assert row[t] == types.get(t, 0), (day, t)
    assert doc["days_since_onset"] == {k: w.dsos[k] for k in doc["days_since_onset"]}
    assert sum(doc["days_since_onset"].values()) == w.real_keys
    assert doc["keys"]["by_final_report_type"]["revoked"] == w.revocations
    assert sum(r["total"] for r in doc["by_key_day"].values()) == w.real_keys
    assert doc["padding"]["detected"] is False


def test_estimate_is_exact_for_full_uploads(tmp_path):
    w = make_world(tmp_path, seed=4, days=14, full_share=1.0, rotate_share=0.3, today_share=0.5)
    doc = _stats(w)
    est = doc["estimated_diagnoses"]["by_publication_day"]
    assert {d: est.get(d, 0) for d in w.uploads_per_day} == {d: float(n) for d, n in w.uploads_per_day.items()}


def test_estimate_error_on_realistic_mix(tmp_path):
    """Mixed uploads (30 % with 1..13 days, 15 % with a restarted day, 40 % with today's key,
    10 % missing their last 1-2 days, 30 % published a day late), duplicates and revocations:
    the estimator's error over 8 worlds of 28 days."""
    totals, days = [], []
    for seed in range(10, 18):
        w = make_world(tmp_path, seed=seed, days=28, dup_share=0.1, revoke_share=0.05,
                       lag_share=0.3, recent_gap_share=0.1)
        doc = _stats(w)
        total_err, day_err = _errors(w, doc)
        totals.append(total_err)
        days.append(day_err)
        # a lower bound on every day: one uploader covers a key day at most once
        est = doc["estimated_diagnoses"]["by_publication_day"]
        assert all(est.get(d, 0) <= n + 1e-9 for d, n in w.uploads_per_day.items())
    worst_total = max(abs(e) for e in totals)
    mean_day = sum(days) / len(days)
    print(f"estimator error: total {100 * sum(totals) / len(totals):+.2f} % (worst {100 * worst_total:.2f} %), "
          f"mean per day {100 * mean_day:.2f} %")
    # figures at the time of writing: total -4.14 % (worst 5.22 %), mean per day 3.96 %
    assert worst_total <= 0.08
    assert mean_day <= 0.06
    assert all(e <= 0 for e in totals)


def test_estimate_undercounts_when_uploads_lack_yesterday(tmp_path):
    """The estimator is a lower bound: it can only miss uploaders, never invent them."""
    w = make_world(tmp_path, seed=5, days=14, full_share=0.0)   # every upload 1..13 days (all have yesterday)
    doc = _stats(w)
    total_err, _ = _errors(w, doc)
    assert total_err <= 1e-9


def test_padding_multiplier_detected_and_divided_out(tmp_path):
    w = make_world(tmp_path, seed=6, days=14, multiplier=5, full_share=1.0, rotate_share=0.0)
    doc = _stats(w)
    pad = doc["padding"]
    assert pad["detected"] and pad["multiplier"] == 5
    assert pad["share"] == pytest.approx(0.8, abs=1e-4)
    assert abs(_errors(w, doc)[0]) <= 0.01


def test_padding_multiplier_detected_from_full_day_keys_alone(tmp_path):
    """No partial-day keys at all: the multiplier shows in groups of different sizes."""
    w = make_world(tmp_path, seed=13, days=10, multiplier=3, today_share=0.0, rotate_share=0.0)
    doc = _stats(w)
    assert doc["padding"]["multiplier"] == 3 and doc["padding"]["share"] == pytest.approx(2 / 3, abs=1e-4)


def test_identical_uploads_are_not_mistaken_for_padding(tmp_path):
    """Four uploaders with identical fields every day (equal group sizes): no padding claimed."""
    ks = _server_with_uploads(tmp_path)
    loaded = stats.load_sources([str(ks.www)], pubkeys=[ks.public_key_path()])
    doc = stats.compute(loaded.batches, sources=loaded.names)
    assert doc["padding"]["detected"] is False and doc["padding"]["multiplier"] == 1
    assert doc["estimated_diagnoses"]["by_publication_day"] == {d: 4.0 for d in doc["by_publication_day"]}


def test_future_keys_are_padding(tmp_path):
    w = make_world(tmp_path, seed=7, days=10, future_keys=3)
    doc = _stats(w)
    pad = doc["padding"]
    assert pad["detected"] and pad["future_keys"] == 30
    assert pad["share"] == pytest.approx(30 / w.published, abs=1e-4)
    assert doc["keys"]["future_keys_ignored"] == 30 and doc["keys"]["distinct"] == w.real_keys


def test_fixed_file_size_padding_is_flagged_with_unknown_share(tmp_path):
    w = make_world(tmp_path, seed=8, days=10, mean_uploads=5, floor=1000)
    doc = _stats(w)
    pad = doc["padding"]
    assert pad["detected"] and pad["min_file_keys"] == 1000 and pad["share"] is None
    assert "unknown" in pad["caveat"]


def test_duplicated_batch_changes_nothing(tmp_path):
    w = make_world(tmp_path, seed=9, days=5)
    first = _stats(w)
    # the same files listed twice (two mirrors): every key is a duplicate the second time
    loaded = stats.load_sources([str(w.folder), str(w.folder)], pubkeys=[w.pub])
    doc = stats.compute(loaded.batches, sources=loaded.names)
    assert doc["keys"]["duplicates"] == w.real_keys
    assert doc["by_publication_day"] == first["by_publication_day"]
    assert doc["estimated_diagnoses"]["by_publication_day"] == first["estimated_diagnoses"]["by_publication_day"]


# ---------------------------------------------------------------------------- CLI output


def test_json_and_png(tmp_path, capsys):
    w = make_world(tmp_path, seed=11, days=21)
    png = tmp_path / "s.png"
    assert main(["stats", "--exports", str(w.folder), "--pubkey", str(w.pub), "--json", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)          # stdout holds only the JSON document
    assert doc["png"] == str(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    avg = doc["estimated_diagnoses"]["seven_day_average"]
    est = doc["estimated_diagnoses"]["by_publication_day"]
    days = sorted(est)
    assert avg[days[6]] == pytest.approx(sum(est[d] for d in days[:7]) / 7, abs=0.01)
    assert main(["stats", "--exports", str(w.folder), "--pubkey", str(w.pub)]) == 0
    text = capsys.readouterr().out
    assert "estimated diagnosed people" in text and "padding caveat" in text


def test_png_to_unwritable_place_is_one_line(tmp_path, capsys):
    rc = main(["stats", "--exports", str(EXAMPLE), "--pubkey", str(EXAMPLE_PUB), "--png",
               str(tmp_path / "no" / "dir" / "x.png")])
    assert rc == 2
    assert capsys.readouterr().err.startswith("tracecode: error:")


# ---------------------------------------------------------------------------- our key server


def _server_with_uploads(tmp_path, clock_start=1_700_000_000):
    from tracecode.keyserver import KeyServer

    t = {"now": clock_start}
    ks = KeyServer.init(tmp_path / "ks", clock=lambda: t["now"])
    rng = random.Random(2)
    for day in range(3):
        for _ in range(4):
            code, _ = ks.issue_code()
            d0 = int(t["now"]) // 86400
            keys = [DiagnosisKey(rng.randbytes(16), (d0 - i) * 144, 144, 1, 0, i) for i in range(1, 15)]
            ks.accept_upload(code, keys)
        t["now"] += 86400
        ks.publish()
    return ks


def test_server_publishes_signed_stats_that_verify(tmp_path, capsys):
    ks = _server_with_uploads(tmp_path)
    folder = ks.www / ks.root
    assert (folder / "stats.json").is_file() and (folder / "stats.json.sig").is_file()
    pub = str(ks.public_key_path())
    assert main(["stats", "--exports", str(ks.www), "--pubkey", pub, "--check-server-stats", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["server_stats"][str(ks.www)]["stats_json"] == "verified"
    assert doc["chain"][str(ks.www)] == "verified"
    assert doc["estimated_diagnoses"]["total"] == 12.0
    server_doc = json.loads((folder / "stats.json").read_text())
    assert server_doc["estimated_diagnoses"] == doc["estimated_diagnoses"]

    # over HTTP, following the hash chain
    from tracecode.keyserver.server import RunningServer

    with RunningServer(ks) as srv:
        assert main(["stats", "--exports", srv.url + "/", "--pubkey", pub, "--cache", str(tmp_path / "c"),
                     "--check-server-stats", "--json"]) == 0
        doc2 = json.loads(capsys.readouterr().out)
        assert doc2["server_stats"][srv.url + "/"]["stats_json"] == "verified"
        assert doc2["by_publication_day"] == doc["by_publication_day"]
        # as a plain EN server (no chain followed; signatures still verified)
        assert main(["stats", "--exports", srv.url + "/tc/index.txt", "--pubkey", pub, "--no-chain",
                     "--cache", str(tmp_path / "c2"), "--check-server-stats", "--json"]) == 0
        doc3 = json.loads(capsys.readouterr().out)
        assert doc3["by_publication_day"] == doc["by_publication_day"] and doc3["signatures"] == {"valid": 3}


def test_altered_stats_or_signature_is_refused(tmp_path, capsys):
    ks = _server_with_uploads(tmp_path)
    folder = ks.www / ks.root
    pub = str(ks.public_key_path())
    orig = (folder / "stats.json").read_bytes()
    doc = json.loads(orig)
    doc["estimated_diagnoses"]["total"] = 1.0
    (folder / "stats.json").write_bytes(json.dumps(doc).encode())
    assert main(["stats", "--exports", str(ks.www), "--pubkey", pub, "--check-server-stats"]) == 3
    assert "signature does not verify" in capsys.readouterr().err
    # re-signed by the server but not matching the batches (a server lying about its own files)
    body = (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
    (folder / "stats.json").write_bytes(body)
    (folder / "stats.json.sig").write_bytes(stats.sign_stats(body, export.load_private_key(ks.private_key_path())))
    assert main(["stats", "--exports", str(ks.www), "--pubkey", pub, "--check-server-stats"]) == 3
    assert "does not match the published batches" in capsys.readouterr().err
    (folder / "stats.json.sig").unlink()
    assert main(["stats", "--exports", str(ks.www), "--pubkey", pub, "--check-server-stats"]) == 3
    # without --check-server-stats the batches alone still give the figures
    assert main(["stats", "--exports", str(ks.www), "--pubkey", pub]) == 0


def test_local_chain_detects_a_removed_batch(tmp_path, capsys):
    ks = _server_with_uploads(tmp_path)
    lines = (ks.www / "index.txt").read_text().split("\n")
    (ks.www / "index.txt").write_text("\n".join([lines[0], lines[2]]))
    assert main(["stats", "--exports", str(ks.www), "--pubkey", str(ks.public_key_path())]) == 3
    assert "chain broken" in capsys.readouterr().err


def test_empty_server_and_index_file_path(tmp_path, capsys):
    from tracecode.keyserver import KeyServer

    ks = KeyServer.init(tmp_path / "empty")
    pub = str(ks.public_key_path())
    png = tmp_path / "e.png"
    assert main(["stats", "--exports", str(ks.www), "--pubkey", pub, "--check-server-stats", "--json",
                 "--png", str(png)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["keys"]["distinct"] == 0 and doc["by_publication_day"] == {} and png.stat().st_size > 5000
    full = _server_with_uploads(tmp_path / "full")
    assert main(["stats", "--exports", str(full.www / "tc" / "index.txt"), "--pubkey", str(full.public_key_path()),
                 "--check-server-stats", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["keys"]["distinct"] == 3 * 4 * 14 and list(doc["chain"].values()) == ["verified"]
