"""Log format v2 end to end on virtual badges (docs/log-format.md): every record the badge
logged reaches the database across an erase + re-flash (a new log generation), and a badge
whose flash is full with a torn record at boot still boots, logs and syncs."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from tracecode.station import flasher
from tracecode.station.ports import BadgePort
from tracecode.station.sync import sync_badge

sim = pytest.importorskip("tracecode.sim", reason="virtual badges (tracecode.sim) not installed")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))
from logparse import read_log  # noqa: E402  (the independent reader of the log format)

pytestmark = pytest.mark.timeout(300)
BOARD = "m5stack-atom-lite"


@pytest.fixture
def fleet(tmp_path):
    f = sim.Fleet(workdir=tmp_path / "fleet", seed=5, start_unix=int(time.time()) // 86400 * 86400 + 9 * 3600)
    yield f
    f.close()


def flash(badge, db, fleet, bid=None):
    opts = flasher.FlashOptions(board=flasher.Board.load(BOARD), skip_image=True,
                                aioble_mip=False, now=fleet.unix_time, badge_id=bid)
    return flasher.flash_badge(BadgePort(badge.console_url()), opts, db)["badge_id"]


def entries(recs):
    """(time, RPI prefix, typical, strongest RSSI) of every per-scan entry."""
    return {(r["first"], r["rpi"], r["rssi_mean"], r["rssi_max"]) for r in recs}


def stored(db, bid):
    return {(r["first_seen"], bytes(r["rpi"]), r["rssi_mean"], r["rssi_max"])
            for r in db.encounters(bid)}


def test_erased_and_reflashed_badge_starts_a_new_generation_nothing_skipped(fleet, db):
    alice = fleet.add_badge("alice", position=(0.0, 0.0), board=BOARD)
    bob = fleet.add_badge("bob", position=(1.0, 0.0), board=BOARD)
    alice.power_on()
    bob.power_on()
    bid = flash(alice, db, fleet)
    flash(bob, db, fleet)
    fleet.run_for(3600)
    root = Path(alice.flash.root)
    rep = sync_badge(db, alice.console_url(), now=fleet.unix_time)
    assert rep.ok and rep.records_new > 0 and rep.crc_errors == 0
    first = entries(read_log(root))
    assert first and stored(db, bid) == first  # v2 entries arrive as per-scan rows
    assert all(len(k[1]) == 8 for k in first)
    today = int(fleet.unix_time()) // 86400
    old_gen = db.segment_generations(bid)[today]
    old_off = db.synced_offsets(bid)[today]
    assert old_gen and old_off > 16

    # Erase the flash and re-flash the badge (same id): it logs today's file anew.
    alice.power_cut()
    for p in root.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    alice.flash.rescan()
    alice.power_on()
    assert flash(alice, db, fleet, bid) == bid
    fleet.run_for(1800)
    rep = sync_badge(db, alice.console_url(), now=fleet.unix_time)
    assert rep.ok and rep.crc_errors == 0
    second = entries(read_log(root))  # (the sync wrote the records still open in RAM)
    assert second and not (second & first)
    assert any("new log generation" in w for w in rep.warnings)
    assert db.segment_generations(bid)[today] != old_gen
    # Every record of both generations is in the database; none was skipped.
    assert stored(db, bid) == first | second
    assert rep.records_new == len(second)
    # A second sync of the new generation pulls nothing again.
    rep = sync_badge(db, alice.console_url(), now=fleet.unix_time)
    assert rep.ok and rep.records_new == 0 and rep.records_dup == 0


def test_full_flash_and_torn_record_at_boot_still_boots_and_syncs(fleet, db):
    alice = fleet.add_badge("alice", position=(0.0, 0.0), board=BOARD)
    bob = fleet.add_badge("bob", position=(1.0, 0.0), board=BOARD)
    alice.power_on()
    bob.power_on()
    bid = flash(alice, db, fleet)
    flash(bob, db, fleet)
    fleet.run_for(1800)
    root = Path(alice.flash.root)
    today = int(fleet.unix_time()) // 86400
    # Older days fill the flash (a synced-nothing badge two weeks out)...
    log = root / "log"
    seg = (log / f"{today}.tcl").read_bytes()
    for d in range(today - 6, today):
        (log / f"{d}.tcl").write_bytes(seg[:4] + seg[4:8] + d.to_bytes(4, "little") + seg[12:16]
                                       + seg[16:] * 3)
    alice.flash.rescan()
    # ... then a power cut tears a record in the middle of an append.
    alice.power_cut()
    good = (log / f"{today}.tcl").read_bytes()
    with open(log / f"{today}.tcl", "ab") as f:
        f.write(good[16:16 + 11])
    alice.flash.rescan()
    alice.flash.set_free(0)  # not one block free: copying the file could never work
    alice.power_on()
    alice.set_clock()
    fleet.run_for(600)
    assert alice.powered
    rep = sync_badge(db, alice.console_url(), now=fleet.unix_time)
    assert rep.ok and rep.running is True, rep
    after = (log / f"{today}.tcl").read_bytes()
    assert after[:len(good)] == good and len(after) > len(good) + 11  # repaired, appended to
    recs = read_log(root)  # every segment parses: the torn tail became padding
    assert recs
    assert stored(db, bid) >= entries([r for r in recs if r["first"] // 86400 == today])


def test_v2_records_match_by_rpi_prefix_like_v1_records():
    """A v2 record (8-byte RPI prefix) decodes to sightings that the matcher matches to the
    diagnosis key with the same attenuation as the full-RPI v1 record of the same scan."""
    import random

    from tracecode import en
    from tracecode.export import DiagnosisKey
    from tracecode.matcher import Sighting, match
    from tracecode.station import logfmt

    rnd = random.Random(4)
    tek = rnd.randbytes(16)
    day = 20000
    rsin = day * 144
    ivs = list(en.derive(tek, rsin, 144, metadata=en.encode_metadata(-8, 0)))
    iv = ivs[60]  # 10:00 UTC
    t0 = iv.enin * 600 + 30 - day * 86400 if hasattr(iv, "enin") else 36000 + 30
    rec = logfmt.encode_v2(iv.rpi, iv.aem, t0, [(0, -70, -62), (60, -74, -66), (61, -72, -60)])
    parsed = logfmt.parse_segment(logfmt.encode_header(day, 2, 0xC0FFEE) + rec, 0, day)
    assert parsed.crc_errors == 0 and parsed.header.generation == 0xC0FFEE
    v2 = [Sighting(e.first_seen, e.rpi, e.aem, e.rssi_mean, rssi_max=e.rssi_max) for e in parsed.records]
    assert [s.time - day * 86400 - t0 for s in v2] == [0, 120, 242]
    v1 = [Sighting(s.time, iv.rpi, s.aem, s.rssi, rssi_max=s.rssi_max) for s in v2]
    # noise: random prefixes and full RPIs nobody's key makes
    noise = [Sighting(day * 86400 + 36000 + i, rnd.randbytes(8), rnd.randbytes(4), -60) for i in range(300)]
    noise += [Sighting(day * 86400 + 36000 + i, rnd.randbytes(16), rnd.randbytes(4), -60) for i in range(300)]
    key = DiagnosisKey(tek, rsin, 144, 1, 0, 0)
    other = DiagnosisKey(rnd.randbytes(16), rsin, 144, 1, 0, 0)
    m2 = match([key, other], v2 + noise)
    m1 = match([key, other], v1 + noise)
    assert len(m2) == len(m1) == 3
    assert [(m.time, m.tx_power, m.attenuation, m.min_attenuation, m.rpi) for m in m2] == \
        [(m.time, m.tx_power, m.attenuation, m.min_attenuation, m.rpi) for m in m1]
    assert m2[0].tx_power == -8 and m2[0].attenuation == -8 + 70 and m2[0].rpi == iv.rpi
    # both kinds in one log (a badge upgraded mid-way): each found once
    assert len(match([key], v1[:1] + v2[1:] + noise)) == 3


def test_v2_rows_in_the_database_match_through_the_column_table(db):
    """`match --db` path: v2 rows (8-byte RPI prefix) read back as columns still match."""
    import random

    from tracecode import en
    from tracecode.export import DiagnosisKey
    from tracecode.matcher import match
    from tracecode.station import logfmt

    rnd = random.Random(9)
    tek, day = rnd.randbytes(16), 20001
    iv = en.derive(tek, day * 144, 144, metadata=en.encode_metadata(-4, 0))[70]
    t0 = iv.enin * 600 + 20 - day * 86400
    data = (logfmt.encode_header(day, 2, 7) + logfmt.encode_v2(iv.rpi, iv.aem, t0, [(0, -66, -60), (60, -68, -61)])
            + logfmt.encode_v2(rnd.randbytes(16), rnd.randbytes(4), t0, [(0, -50, -50)]))
    parsed = logfmt.parse_segment(data, 0, day)
    db.add_badge("b1", "generic-esp32", bytes(32))
    s = db.start_session("b1", "test")
    assert db.commit_pull("b1", s, {day: (parsed.end, parsed.records)}, {day: "00000007"}) == (3, 0)
    assert db.commit_pull("b1", s, {day: (parsed.end, parsed.records)}, {day: "00000007"}) == (0, 3)
    assert db.check()["ok"]
    ms = match([DiagnosisKey(tek, day * 144, 144, 1, 0, 0)], db.sighting_table("b1"))
    assert [(m.time - day * 86400 - t0, m.tx_power, m.attenuation) for m in ms] == [(0, -4, 62), (120, -4, 64)]
    assert len(match([DiagnosisKey(tek, day * 144, 144, 1, 0, 0)], db.sightings("b1"))) == 2
