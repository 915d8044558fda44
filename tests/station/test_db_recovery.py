"""A damaged station database: refused with one line and a hint, salvaged by `db recover`,
and a resync of the real (virtual) badge brings back everything the badge had not
acknowledged; only acknowledged records on damaged pages are lost, and exactly those are
counted (docs/station.md, "Recovering a damaged database")."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from tracecode.cli import main
from tracecode.station import flasher, logfmt
from tracecode.station.db import Database
from tracecode.station.ports import BadgePort

sim = pytest.importorskip("tracecode.sim", reason="virtual badges (tracecode.sim) not installed")
pytestmark = pytest.mark.timeout(120)
BOARD = "esp32-devkitc"


def write_day(badge, day, n, seed):
    rnd = random.Random(seed)
    recs = [logfmt.encode_record(rnd.randbytes(16), rnd.randbytes(4), 300 * i + 7, 5, 3,
                                 -80, -60, -70) for i in range(n)]
    log = Path(badge.flash.root) / "log"
    log.mkdir(exist_ok=True)
    (log / f"{day}.tcl").write_bytes(logfmt.encode_header(day) + b"".join(recs))
    badge.flash.rescan()
    return set(recs)


def test_damaged_database_recover_and_resync(tmp_path, capsys):
    fleet = sim.Fleet(workdir=tmp_path / "fleet", seed=5, start_unix=int(time.time()))
    try:
        badge = fleet.add_badge("dora", board=BOARD)
        badge.power_on()
        url = badge.console_url()
        dbp = tmp_path / "station.sqlite"
        with Database(dbp) as db:
            opts = flasher.FlashOptions(board=flasher.Board.load(BOARD), skip_image=True,
                                        aioble_mip=False, now=fleet.unix_time)
            bid = flasher.flash_badge(BadgePort(url), opts, db)["badge_id"]
        today = int(fleet.unix_time()) // 86400
        acked = set()
        for k, day in enumerate(range(today - 6, today - 2)):
            acked |= write_day(badge, day, 120, seed=k)
        assert main(["sync", "--port", url, "--db", str(dbp)]) == 0
        capsys.readouterr()
        # the badge logs another day; then the station's disk damages pages of the file
        fresh = write_day(badge, today - 2, 80, seed=99)
        data = bytearray(dbp.read_bytes())
        page = int.from_bytes(data[16:18], "big")
        # every page holding one record (its table row and its index entry)
        target = sorted(acked)[len(acked) // 2]
        hit, at = set(), data.find(target)
        while at >= 0:
            hit.add(at // page)
            at = data.find(target, at + 1)
        assert len(hit) >= 2, "record not found in the table and its index"
        for victim in hit:
            data[victim * page:(victim + 1) * page] = bytes(page)
        dbp.write_bytes(bytes(data))

        # every command refuses it: one line, exit 2, the recovery hint; the badge is untouched
        for argv in (["sync", "--port", url], ["status"], ["db", "check"]):
            assert main(argv + ["--db", str(dbp)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("tracecode: error:"), err
            assert "db recover" in err[0] and "Recovering a damaged database" in err[0]

        new = tmp_path / "recovered.sqlite"
        assert main(["db", "recover", "--db", str(dbp), "--out", str(new), "--json"]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["tables"]["badges"] == 1          # the pairing secret survived
        assert main(["sync", "--port", url, "--db", str(new), "--json"]) == 0
        synced = json.loads(capsys.readouterr().out)[0]
        assert synced["records_new"] >= len(fresh)
        with Database(new, create=False) as db:
            have = {bytes(r["raw"]) for r in db.encounters(bid)}
        assert fresh <= have                          # nothing unacknowledged is lost
        lost = acked - have
        assert 0 < len(lost) == rep["acknowledged_records_lost"] + rep["bad_records"]
        assert target in lost and len(lost) <= len(hit) * page // 32   # only those pages
        assert main(["db", "check", "--db", str(new)]) == 0
    finally:
        fleet.close()
