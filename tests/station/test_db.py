"""Station database: schema version, idempotent commits, health-code queue, integrity check."""

import json
import os
import sqlite3
import struct
from types import SimpleNamespace

import pytest

from tracecode.cli import main
from tracecode.errors import InputError
from tracecode.station import logfmt
from tracecode.station.db import SCHEMA_VERSION, Database
from tracecode.station.ports import BadgePort, detect, resolve, usb_kind

DAY = 20_400


def records(n, day=DAY, start=16):
    out = []
    for i in range(n):
        raw = logfmt.encode_record(bytes([i]) * 16, b"\xaa\xbb\xcc\xdd", 3600 + i, 4, 3,
                                   -80, -60, -70)
        out.append(logfmt.decode_record(raw, day, start + 32 * i))
    return out


def test_record_layout_matches_log_format_doc():
    raw = logfmt.encode_record(bytes(range(16)), b"\x01\x02\x03\x04", 0x012345, 300, 7,
                               -90, -50, -71)
    assert len(raw) == 32 and raw[0] == 1 and raw[1:17] == bytes(range(16))
    assert raw[17:21] == b"\x01\x02\x03\x04" and raw[21:24] == b"\x45\x23\x01"
    assert struct.unpack_from("<HBbbb", raw, 24) == (300, 7, -90, -50, -71)
    import binascii
    assert struct.unpack_from("<H", raw, 30)[0] == binascii.crc32(raw[:30]) & 0xFFFF
    e = logfmt.decode_record(raw, DAY, 16)
    assert e.first_seen == DAY * 86400 + 0x012345 and e.count == 7 and e.rssi_mean == -71
    bad = raw[:5] + bytes([raw[5] ^ 1]) + raw[6:]
    assert not logfmt.crc_ok(bad)
    assert logfmt.check_header(logfmt.encode_header(DAY), DAY) is None
    assert "magic" in logfmt.check_header(b"XXXX" + bytes(12), DAY)


def test_schema_and_file_mode(tmp_path):
    p = tmp_path / "st.sqlite"
    with Database(p) as db:
        assert db.schema_version == SCHEMA_VERSION
        assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"badges", "sync_sessions", "segments", "encounters", "diagnosed_keys",
                "matches", "health_codes"} <= tables
    assert os.stat(p).st_mode & 0o077 == 0
    with Database(p) as db:        # reopening does not migrate twice
        assert db.schema_version == SCHEMA_VERSION


def test_newer_schema_refused(tmp_path):
    p = tmp_path / "st.sqlite"
    c = sqlite3.connect(p)
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    c.close()
    with pytest.raises(Exception, match="newer than this tracecode"):
        Database(p)


def test_commit_is_idempotent_and_atomic(tmp_path):
    with Database(tmp_path / "st.sqlite") as db:
        db.add_badge("b1", "devkit", os.urandom(32))
        s = db.start_session("b1", "socket://x")
        recs = records(10)
        assert db.commit_pull("b1", s, {DAY: (16 + 320, recs)}) == (10, 0)
        assert db.commit_pull("b1", s, {DAY: (16 + 320, recs)}) == (0, 10)
        assert db.encounter_count("b1") == 10
        assert db.synced_offsets("b1") == {DAY: 336}
        # a failing record aborts the whole transaction: nothing of it is kept
        broken = records(3, day=DAY + 1) + [SimpleNamespace(**{**records(1)[0].__dict__, "raw": b"short"})]
        with pytest.raises(sqlite3.IntegrityError):
            db.commit_pull("b1", s, {DAY + 1: (16 + 128, broken)})
        assert db.encounter_count("b1") == 10 and DAY + 1 not in db.synced_offsets("b1")


def test_health_queue(tmp_path):
    with Database(tmp_path / "st.sqlite") as db:
        db.add_badge("b1", "devkit", os.urandom(32))
        assert db.pending_health("b1") is None
        with pytest.raises(InputError):
            db.set_health_code("b1", "purple")
        with pytest.raises(InputError):
            db.set_health_code("nobody", "red")
        db.set_health_code("b1", "yellow", "test")
        hid = db.set_health_code("b1", "red", "test")
        p = db.pending_health("b1")
        assert p["code"] == "red" and p["id"] == hid
        db.mark_health_delivered(hid, None)
        assert db.pending_health("b1") is None
        # a match result with the same code queues nothing new; a different one does
        db.record_match("b1", SimpleNamespace(exposures=[], health_code="red"))
        assert db.pending_health("b1") is None
        db.record_match("b1", SimpleNamespace(exposures=[{"minutes": 20}], health_code="green"))
        assert db.pending_health("b1")["code"] == "green"
        assert len(db.matches("b1")) == 2


def test_sightings_for_matcher(tmp_path):
    from tracecode.matcher import Sighting

    with Database(tmp_path / "st.sqlite") as db:
        db.add_badge("b1", "devkit", os.urandom(32))
        db.commit_pull("b1", db.start_session("b1", "p"), {DAY: (16 + 96, records(3))})
        s = db.sightings("b1")
        assert all(isinstance(x, Sighting) for x in s) and len(s) == 3
        assert s[0].time == DAY * 86400 + 3600 and s[0].rpi == bytes(16) and s[0].rssi == -70
        assert s[0].rssi_max == -60


def test_db_check_finds_a_corrupted_record(tmp_path, capsys):
    p = tmp_path / "st.sqlite"
    with Database(p) as db:
        db.add_badge("b1", "devkit", os.urandom(32))
        db.commit_pull("b1", db.start_session("b1", "p"), {DAY: (16 + 96, records(3))})
    assert main(["db", "check", "--db", str(p)]) == 0
    assert "3 record(s), 0 bad CRC" in capsys.readouterr().out
    c = sqlite3.connect(p)
    raw = bytearray(c.execute("SELECT raw FROM encounters WHERE id=2").fetchone()[0])
    raw[3] ^= 0x40
    c.execute("UPDATE encounters SET raw=? WHERE id=2", (bytes(raw),))
    c.commit()
    c.close()
    assert main(["db", "check", "--db", str(p), "--json"]) == 2
    out = capsys.readouterr()
    assert json.loads(out.out)["bad_crc"][0]["id"] == 2 and "is damaged: 1 record(s) fail their CRC" in out.err
    assert len(out.err.strip().splitlines()) == 1 and "db recover" in out.err


def _three(p):
    with Database(p) as db:
        db.add_badge("b1", "devkit", os.urandom(32))
        db.commit_pull("b1", db.start_session("b1", "p"), {DAY: (16 + 96, records(3))})


def test_db_check_rederives_columns_from_the_raw_record(tmp_path, capsys):
    p = tmp_path / "st.sqlite"
    _three(p)
    c = sqlite3.connect(p)
    c.execute("UPDATE encounters SET rssi_mean = 0 WHERE id = 3")   # raw (and its CRC) intact
    c.commit()
    c.close()
    assert main(["db", "check", "--db", str(p), "--json"]) == 2
    rep = json.loads(capsys.readouterr().out)
    assert rep["bad_crc"] == [] and rep["bad_derived"] == [
        {"id": 3, "badge": "b1", "day": DAY, "offset": 80, "columns": ["rssi_mean"]}]


def test_missing_rows_refused_by_every_command(tmp_path, capsys):
    p = tmp_path / "st.sqlite"
    _three(p)
    c = sqlite3.connect(p)
    c.execute("DELETE FROM encounters WHERE id = 2")
    c.commit()
    c.close()
    for argv in (["status"], ["sync", "--port", "socket://127.0.0.1:1"], ["db", "check"],
                 ["db", "set-health", "b1", "red"]):
        assert main(argv + ["--db", str(p)]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "1 synced encounter row(s) missing" in err[0] + \
            "1 synced encounter row(s) missing" * (argv[1:2] == ["check"]), err
    # skipped slots (bad CRC at sync time) are not "missing"
    q = tmp_path / "skips.sqlite"
    with Database(q) as db:
        db.add_badge("b1", "devkit", os.urandom(32))
        recs = records(4)
        db.commit_pull("b1", db.start_session("b1", "p"), {DAY: (16 + 128, recs[:2] + recs[3:])})
    assert main(["status", "--db", str(q)]) == 0


@pytest.mark.parametrize("argv", [["status"], ["db", "check"], ["sync"], ["db", "backup"],
                                  ["db", "set-health", "b1", "red"], ["diagnose", "--badge", "b1"]])
def test_no_database_is_created_by_reading_commands(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRACECODE_DB", raising=False)
    assert main(argv) == 2
    assert "no station database at tracecode.sqlite" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    assert main(argv + ["--db", str(empty)]) == 2
    assert "is damaged: the file is empty (0 bytes)" in capsys.readouterr().err
    assert empty.read_bytes() == b"" and sorted(tmp_path.iterdir()) == [empty]


def test_db_init_then_backup_and_migration_backup(tmp_path, capsys):
    p = tmp_path / "st.sqlite"
    assert main(["db", "init", "--db", str(p), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["schema_version"] == SCHEMA_VERSION
    assert main(["db", "init", "--db", str(p)]) == 2        # never over an existing file
    capsys.readouterr()
    _three(tmp_path / "data.sqlite")
    bak = tmp_path / "copy.bak"
    assert main(["db", "backup", "--db", str(tmp_path / "data.sqlite"), "--out", str(bak),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backup"] == str(bak)
    with Database(bak, create=False) as db:
        assert db.encounter_count("b1") == 3 and db.check()["ok"]
    # a version-1 database (before `segments.skipped`) is backed up, then migrated
    v1 = tmp_path / "v1.sqlite"
    c = sqlite3.connect(v1)
    from tracecode.station.db import MIGRATIONS, _split_sql
    for stmt in _split_sql(MIGRATIONS[0]):
        c.execute(stmt)
    c.execute("PRAGMA user_version = 1")
    c.commit()
    c.close()
    with Database(v1, create=False) as db:
        assert db.schema_version == SCHEMA_VERSION
    baks = list(tmp_path.glob("v1.sqlite.v1-*.bak"))
    assert len(baks) == 1
    assert sqlite3.connect(baks[0]).execute("PRAGMA user_version").fetchone()[0] == 1


def test_damaged_database_campaign_slice(tmp_path):
    """CI slice of tools/campaign_db.py: 50 damaged databases, fixed seed."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "campaign_db", Path(__file__).resolve().parents[2] / "tools" / "campaign_db.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tally = mod.campaign(50, 1, tmp_path)
    assert tally["runs"] == 50 and tally["refused"] >= 40
    assert tally["tracebacks"] == 0 and tally["silent"] == 0 and tally["not_refused"] == 0
    assert tally["bad_refusals"] == 0, tally["failures"][:3]


def test_ports_by_vid_pid():
    info = lambda dev, vid, pid: SimpleNamespace(device=dev, vid=vid, pid=pid, serial_number="x")
    fake = [info("/dev/ttyUSB1", 0x10C4, 0xEA60), info("/dev/ttyS0", None, None),
            info("/dev/ttyACM0", 0x303A, 0x1001), info("/dev/ttyACM1", 0x303A, 0x4001),
            info("/dev/ttyUSB0", 0x1A86, 0x7523), info("/dev/ttyUSB2", 0x0403, 0x6015),
            info("/dev/ttyUSB3", 0x046D, 0xC52B)]
    found = [p.device for p in detect(lambda: fake)]
    assert found == ["/dev/ttyACM0", "/dev/ttyACM1", "/dev/ttyUSB0", "/dev/ttyUSB1", "/dev/ttyUSB2"]
    assert usb_kind(0x1A86, 0x55D4) == "CH9102" and usb_kind(0x0403, 0x6010) is None
    given = resolve(["socket://127.0.0.1:5000", "/dev/ttyUSB9", "socket://127.0.0.1:5000"])
    assert [p.device for p in given] == ["socket://127.0.0.1:5000", "/dev/ttyUSB9"]
    assert given[0].is_virtual and not given[1].is_virtual
    with pytest.raises(Exception, match="no badge found"):
        resolve(None, lambda: fake[1:2])
