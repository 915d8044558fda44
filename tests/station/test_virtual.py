"""The station against virtual badges (tracecode.sim): the unmodified firmware behind a
serial console that real mpremote transport code talks to."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from tracecode.cli import main
from tracecode.errors import DeviceError, TraceCodeError
from tracecode.station import flasher, logfmt
from tracecode.station.db import Database
from tracecode.station import frames
from tracecode.station.link import BadgeLink, BadgeRefused, open_link
from tracecode.station.ports import BadgePort
from tracecode.station.sync import sync_badge

sim = pytest.importorskip("tracecode.sim", reason="virtual badges (tracecode.sim) not installed")

pytestmark = pytest.mark.timeout(120)
BOARD = "m5stack-atom-lite"     # RGB LED: the health colour can be read back
BUTTON_BOARD = "esp32-devkitc"  # consent button on GPIO4 (not a strapping pin) with the internal pull-up


def _vm_reason():
    from tracecode.sim.vmbadge import vm_available
    return vm_available()


# Every station test runs on the imitation in `make test`, and again on badges running the real
# MicroPython VM in `make test-slow` (which CI runs too).
@pytest.fixture(params=["imitation",
                        pytest.param("vm", marks=[pytest.mark.slow,
                                                  pytest.mark.skipif(_vm_reason() is not None,
                                                                     reason=str(_vm_reason()))])])
def fleet(request, tmp_path):
    f = sim.Fleet(workdir=tmp_path / "fleet", seed=3, start_unix=int(time.time()),
                  backend=request.param)
    yield f
    f.close()


# The core station workflow (sync, resume after an unplug, status) also runs against badges
# on the real MicroPython VM (littlefs, ESP32-sized heap); the rest on the fast imitation.
@pytest.fixture(params=[pytest.param("vm", marks=pytest.mark.skipif(_vm_reason() is not None,
                                                                     reason=str(_vm_reason()))),
                        "imitation"])
def any_fleet(request, tmp_path):
    f = sim.Fleet(workdir=tmp_path / "fleet", seed=3, start_unix=int(time.time()),
                  backend=request.param)
    yield f
    f.close()


def provision(fleet, db, name, position=(0.0, 0.0), board=BOARD, lock=True):
    """A blank virtual badge, flashed (files + provisioning) by the station code: locked (the
    product's default, protocol 2) unless `lock=False` (developer mode, the raw REPL)."""
    badge = fleet.add_badge(name, position=position, board=board)
    badge.power_on()
    url = badge.console_url()
    opts = flasher.FlashOptions(board=flasher.Board.load(board), skip_image=True,
                                aioble_mip=False, now=fleet.unix_time, lock=lock)
    res = flasher.flash_badge(BadgePort(url), opts, db)
    return badge, url, res["badge_id"]


def link_class(url):
    """The link class `open_link` picks for the badge at `url` (LockedLink or BadgeLink)."""
    link = open_link(url)
    try:
        return type(link)
    finally:
        link.close()


def fill_log(badge, fleet, days=3, per_day=50, corrupt=None, seed=1):
    """Write past days of records into the badge's flash in the documented format.

    `corrupt` = (day index, record index) gets a flipped bit (flash corruption).
    Returns {raw record bytes} that a sync must deliver (the corrupted one excluded)."""
    rnd = random.Random(seed)
    today = int(fleet.unix_time()) // 86400
    files = {}
    want = set()
    for di, day in enumerate(range(today - days, today)):
        recs = []
        for i in range(per_day):
            raw = logfmt.encode_record(rnd.randbytes(16), rnd.randbytes(4), 600 * i + di, 5, 3,
                                       -80, -60, -70)
            if corrupt == (di, i):
                raw = raw[:10] + bytes([raw[10] ^ 0x10]) + raw[11:]
            else:
                want.add(raw)
            recs.append(raw)
        files[f"/log/{day}.tcl"] = logfmt.encode_header(day) + b"".join(recs)
    vm = getattr(badge, "backend", "imitation") == "vm"
    if vm:
        badge.power_cut(at=fleet.clock())   # a littlefs image is written with the badge off
        fleet.run_for(0.1)
    for path, data in files.items():
        badge.flash.write(path, data)
    if vm:
        badge.power_on(at=fleet.clock())
        fleet.run_for(2)                    # booted: main.py traces again
    return want


def stored(db, bid):
    return {bytes(r["raw"]) for r in db.encounters(bid)}


def log_files(badge):
    return sorted(p[5:] for p in badge.flash.files() if p.startswith("/log/") and p.endswith(".tcl"))


# ---------------------------------------------------------------------------- provision
def test_flash_cli_provisions_and_refuses_foreign_badge(fleet, tmp_path, capsys):
    badge = fleet.add_badge("carol", board=BOARD)
    badge.power_on()
    url = badge.console_url()
    dbp = tmp_path / "a.sqlite"
    rc = main(["flash", "--board", BOARD, "--skip-image", "--no-aioble", "--port", url,
               "--db", str(dbp), "--badge-id", "carol-01", "--config", "scan_every_s=60"])
    assert rc == 0, capsys.readouterr()
    assert "flashed badge carol-01" in capsys.readouterr().out
    assert badge.flash.exists("/tcbadge/hostif.py")
    with Database(dbp) as d:
        secret = d.secret("carol-01")
        assert secret is not None and len(secret) == 32
    prov = json.loads(badge.flash.read("/tc/prov.json"))
    assert prov["id"] == "carol-01" and prov["config"]["scan_every_s"] == 60
    assert bytes.fromhex(prov["secret"]) == secret
    link = open_link(url)                 # firmware answers (locked) and the secret works
    try:
        assert isinstance(link, frames.LockedLink) and link.hello["locked"]
        assert link.hello["provisioned"] and link.badge_id == "carol-01"
        link.auth(secret)
    finally:
        link.close()
    # re-flashing from the same station keeps the pairing: a locked badge has no raw REPL,
    # so the station unlocks it first (maintenance unlock), and flashes it in developer mode
    # (--unlocked) because the refusals below are the flasher's own, over the raw REPL
    assert main(["unlock", url, "--db", str(dbp)]) == 0
    assert main(["flash", "--board", BOARD, "--skip-image", "--no-aioble", "--port", url,
                 "--db", str(dbp), "--unlocked"]) == 0
    with Database(dbp) as d:
        assert d.secret("carol-01") == secret
    # another station may not take the badge over silently, nor install its own firmware
    # first: the refusal comes before anything is written to the badge
    other = tmp_path / "b.sqlite"
    mine = _flash_tree(badge)
    assert "/main.py" in mine and "/tcbadge/hostif.py" in mine
    evil = tmp_path / "evil"
    (evil / "tcbadge").mkdir(parents=True)
    (evil / "main.py").write_text("print('not TraceCode')\n")
    (evil / "boot.py").write_text("")
    (evil / "tcbadge" / "__init__.py").write_text("VERSION = 'evil'\n")
    (evil / "tcbadge" / "hostif.py").write_text("class Host:\n    pass\n")
    rc = main(["flash", "--board", BOARD, "--skip-image", "--no-aioble", "--port", url,
               "--db", str(other), "--firmware-dir", str(evil)])
    err = capsys.readouterr().err
    assert rc == 4 and "paired with another station" in err and secret.hex() not in err
    assert _flash_tree(badge) == mine            # main.py and tcbadge/ byte-identical
    # right id in the stranger's database, wrong secret: refused just the same
    with Database(other) as d:
        d.add_badge("carol-01", BOARD, os.urandom(32))
    rc = main(["flash", "--board", BOARD, "--skip-image", "--no-aioble", "--port", url,
               "--db", str(other), "--firmware-dir", str(evil)])
    err = capsys.readouterr().err
    assert rc == 4 and "refused this station" in err and secret.hex() not in err
    assert _flash_tree(badge) == mine
    link = open_link(url)                        # still ours, still answering
    try:
        link.auth(secret)
    finally:
        link.close()


def _flash_tree(badge) -> dict:
    """main.py, boot.py and tcbadge/ on the badge's flash: {path: bytes}."""
    out = {}
    for rel, size in badge.flash.files().items():
        if size >= 0 and (rel in ("/main.py", "/boot.py") or rel.startswith("/tcbadge/")):
            out[rel] = badge.flash.read(rel)
    return out


# ---------------------------------------------------------------------------- sync
def test_sync_commits_acks_and_is_idempotent(any_fleet, db):
    fleet = any_fleet
    badge, url, bid = provision(fleet, db, "alice")
    want = fill_log(badge, fleet, days=3, per_day=50, corrupt=(1, 20))
    rep = sync_badge(db, url, now=fleet.unix_time)
    assert rep.ok and rep.records_new == 149 and rep.crc_errors == 1
    assert stored(db, bid) == want
    # (a VM badge was power-cycled to write its log: its clock resumed from the persisted
    # upper bound, up to 10 s ahead, and the sync corrects it)
    assert abs(rep.drift_s) < (15 if getattr(badge, "backend", "") == "vm" else 5)
    assert rep.payload_bytes == 3 * (16 + 50 * 32)
    assert rep.ratio > 0.7
    assert len(rep.acked) == 3
    assert log_files(badge) == []          # fully acknowledged past days are freed
    assert rep.flash_total and rep.fw and rep.running is True
    assert rep.coverage["records"] == 149
    # again: nothing new, nothing duplicated
    rep2 = sync_badge(db, url, now=fleet.unix_time)
    assert rep2.ok and rep2.records_new == 0 and rep2.records_dup == 0
    assert db.encounter_count(bid) == 149
    assert db.check()["ok"]
    assert [s["status"] for s in db.sessions(bid)] == ["ok", "ok"]


def test_unplug_mid_sync_loses_and_duplicates_nothing(any_fleet, db):
    fleet = any_fleet
    badge, url, bid = provision(fleet, db, "bob")
    want = fill_log(badge, fleet, days=3, per_day=300)
    for cut in (200, 3_000, 25_000):
        badge.console.disconnect_after(cut)
        with pytest.raises(DeviceError):
            sync_badge(db, url, now=fleet.unix_time)
        assert db.encounter_count(bid) == 0    # nothing half-committed
        assert len(log_files(badge)) == 3      # nothing acknowledged, nothing freed

    Link = link_class(url)                     # a locked badge: frames.LockedLink

    class UnplugBeforeAck(Link):
        def ack(self, day, offset):
            badge.console.disconnect()
            return super().ack(day, offset)

    with pytest.raises(DeviceError):
        sync_badge(db, url, now=fleet.unix_time, link_factory=UnplugBeforeAck)
    assert stored(db, bid) == want             # committed, not yet acknowledged
    assert len(log_files(badge)) == 3
    rep = sync_badge(db, url, now=fleet.unix_time)
    assert rep.ok and rep.records_new == 0 and rep.records_dup == 0 and len(rep.acked) == 3
    assert stored(db, bid) == want and db.encounter_count(bid) == 900
    assert log_files(badge) == []
    statuses = [s["status"] for s in db.sessions(bid)]
    # (the 200-byte cut falls before authentication, so before a session exists)
    # (protocol 2's handshake is ~120 bytes: the 200-byte cut falls after authentication, so
    # all four failed syncs had a session; a developer-mode badge's 200-byte cut has none)
    assert statuses.count("failed") == (4 if Link is frames.LockedLink else 3)
    assert statuses[-1] == "ok"


def _on_flash(badge) -> set:
    """(day, raw record) of every whole record in the badge's log files now."""
    out = set()
    for day, data in badge.flash.segments().items():
        try:
            parsed = logfmt.parse_segment(data, 0, day)
        except ValueError:
            continue
        out |= {(e.day, bytes(e.raw)) for e in parsed.records}
    return out


@pytest.mark.timeout(300)
def test_seeded_unplugs_tracing_resumes_nothing_lost_or_duplicated(fleet, db):
    """30 seeded unplugs (CI slice of tools/campaign_badge.py): the cable pulled after a
    random number of bytes of a sync, or between the database commit and the badge's ack.
    After each one the badge traces again (new records after some virtual time, with no
    host to restart it), and a final sync holds every record exactly once."""
    badge, url, bid = provision(fleet, db, "uma", position=(0.0, 0.0))
    peer = fleet.add_badge("peer", position=(1.0, 0.0), board=BOARD,   # someone to hear
                           firmware_dir=flasher.DEFAULT_FIRMWARE_DIR)
    peer.power_on()
    peer.set_clock(fleet.unix_time())
    fill_log(badge, fleet, days=2, per_day=300, seed=9)          # ~25 KB to pull at first
    rnd = random.Random(30)
    seen = _on_flash(badge)                                      # every record ever written
    Link = link_class(url)                                       # locked: frames.LockedLink

    class UnplugBeforeAck(Link):
        def ack(self, day, offset):
            badge.console.disconnect()
            return super().ack(day, offset)

    cuts = 0
    full = 30_000
    for i in range(30):
        seen |= _on_flash(badge)
        before_ack = i % 4 == 3
        if before_ack:
            factory = UnplugBeforeAck
        else:
            factory = Link
            badge.console.disconnect_after(rnd.randrange(0, full))
        tx = badge.console.tx_bytes
        try:
            sync_badge(db, url, now=fleet.unix_time, link_factory=factory)
            full = max(200, badge.console.tx_bytes - tx)  # bytes a whole sync takes now
        except DeviceError:
            cuts += 1
        badge.console.disconnect_after(None)
        # no host comes back: the badge must resume tracing by itself
        had = seen | _on_flash(badge) | {(r["day"], bytes(r["raw"])) for r in db.encounters(bid)}
        fleet.run_for(900)
        for _ in range(12):
            now = _on_flash(badge)
            if now - had:
                break
            fleet.run_for(300)
        assert now - had, f"unplug {i}: no new records after {fleet.unix_time():.0f}"
        seen |= now
    assert cuts >= 25, cuts
    rep = sync_badge(db, url, now=fleet.unix_time)
    assert rep.ok
    seen |= _on_flash(badge)
    got = [(r["day"], bytes(r["raw"])) for r in db.encounters(bid)]
    assert len(got) == len(set(got))                             # nothing duplicated
    assert set(got) >= seen, len(seen - set(got))                # nothing lost
    assert db.check()["ok"]


def test_unauthenticated_host_is_refused(fleet, db, tmp_path):
    # developer mode: the raw REPL's Host object is called without authenticating (a locked
    # badge has no REPL; its refusals are in test_locked.py)
    badge, url, bid = provision(fleet, db, "dave", lock=False)
    fill_log(badge, fleet, days=1, per_day=10)
    with Database(tmp_path / "stranger.sqlite") as other:
        with pytest.raises(DeviceError, match="unknown to this station"):
            sync_badge(other, url, now=fleet.unix_time)
        other.add_badge(bid, BOARD, os.urandom(32))    # right id, wrong secret
        with pytest.raises(DeviceError, match="refused this station"):
            sync_badge(other, url, now=fleet.unix_time)
        assert other.encounter_count() == 0
    with BadgeLink(url) as link:                      # no auth at all
        for method, args in (("segments", ()), ("read", (0, 0, 16)), ("export_keys", (0,)),
                             ("set_health", ("red",))):
            with pytest.raises(BadgeRefused) as exc:
                link.call(method, *args)
            assert exc.value.code == "auth"
    assert len(log_files(badge)) == 1                 # still there, unread
    assert sync_badge(db, url, now=fleet.unix_time).records_new == 10


def test_session_left_by_an_unplugged_sync_is_refused_to_the_next_host(fleet, db):
    """The owner's sync is unplugged after authenticating; the badge's REPL still holds its
    `h`. A stranger enters the raw REPL without a soft reset (as `mpremote resume exec`
    does) and calls h directly: refused, nothing read, acknowledged or set."""
    # developer mode: the stranger uses the raw REPL, which a locked badge does not have
    badge, url, bid = provision(fleet, db, "ivan", lock=False)
    fill_log(badge, fleet, days=2, per_day=20)

    class UnplugBeforeAck(BadgeLink):
        def ack(self, day, offset):
            badge.console.disconnect()
            return super().ack(day, offset)

    with pytest.raises(DeviceError):
        sync_badge(db, url, now=fleet.unix_time, link_factory=UnplugBeforeAck)
    fleet.run_for(11)              # the stranger plugs in 11 s later (before the watch resets)
    files = log_files(badge)
    stranger = BadgeLink(url, soft_reset=False, restart=False)
    stranger.open(probe=False)
    try:
        for code in ("h.segments()", "h.set_health('red')", "h.ack(%d, 9999)" % (fleet.unix_time() // 86400 - 1),
                     "h.read(%d, 0, 64)" % (fleet.unix_time() // 86400 - 1)):
            out = json.loads(stranger.run(code).decode().strip())
            assert out["error"] == "auth", (code, out)
        # a new Host of its own (no secret) cannot revive the old one either
        stranger.run("from tcbadge.hostif import Host\nh2 = Host()\nh2.hello()")
        assert json.loads(stranger.run("h.segments()").decode())["error"] == "auth"
    finally:
        stranger.close()
    assert log_files(badge) == files
    profile = json.loads((flasher.DEFAULT_BOARDS_DIR / f"{BOARD}.json").read_text())
    shown = badge.led()["neopixel"].get(profile["led"]["pin"], [None])[0]
    assert shown is None or tuple(shown) != tuple(profile["led"]["colours"]["red"])
    rep = sync_badge(db, url, now=fleet.unix_time)      # the owner is still welcome
    assert rep.ok and rep.records_new == 0 and len(rep.acked) == 2 and rep.health_set is None


# ---------------------------------------------------------------------------- health + status
def test_health_code_reaches_the_badge_led(fleet, db, tmp_path, capsys):
    badge, url, bid = provision(fleet, db, "erin")
    db.set_health_code(bid, "yellow", "test exposure")
    rep = sync_badge(db, url, now=fleet.unix_time)
    assert rep.health_set == "yellow" and db.pending_health(bid) is None
    profile = json.loads((flasher.DEFAULT_BOARDS_DIR / f"{BOARD}.json").read_text())
    pin = profile["led"]["pin"]
    assert tuple(badge.led()["neopixel"][pin][0]) == tuple(profile["led"]["colours"]["yellow"])
    rc = main(["status", "--db", str(db.path), "--port", url, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    row = next(r for r in out["badges"] if r["badge_id"] == bid)
    assert row["health"] == "yellow" and row["health_shown"] == "yellow"
    assert row["running"] is True and row["fw"] and row["last_sync"]


def test_status_flags_a_badge_without_firmware(any_fleet, db, capsys):
    fleet = any_fleet
    blank = fleet.add_badge("blank", board=BOARD)
    blank.power_on()
    rc = main(["status", "--db", str(db.path), "--port", blank.console_url()])
    assert rc == 4 and "not running TraceCode firmware" in capsys.readouterr().err


# ---------------------------------------------------------------------------- diagnose
def _badge_teks(badge) -> dict[int, bytes]:
    raw = badge.flash.read("/tc/keys.bin")
    return {int.from_bytes(raw[i:i + 4], "little"): raw[i + 4:i + 20]
            for i in range(0, len(raw), 20)}


def test_diagnose_without_consent_releases_nothing(fleet, db, tmp_path, capsys):
    badge, url, bid = provision(fleet, db, "frank", board=BUTTON_BOARD)
    fleet.run_for(600)
    out = tmp_path / "out"
    from tracecode.export import generate_signing_key
    priv, _pub = generate_signing_key(tmp_path / "keys")
    rc = main(["diagnose", "--badge", bid, "--port", url, "--db", str(db.path), "--out",
               str(out), "--signing-key", str(priv), "--wait", "2"])
    cap = capsys.readouterr()
    assert "press the button" in cap.out
    assert rc == 5 and "no consent" in cap.err and "nothing left the badge" in cap.err
    assert not out.exists() or not any(out.iterdir())
    assert db.diagnosed_keys() == [] and db.badge(bid)["diagnosed_at"] is None


def test_diagnose_with_consent_writes_signed_batch(db, tmp_path, capsys):
    # virtual time starts 2.5 days ago so that after 2 days of tracing the badge's keys are
    # not in the future of the host clock the CLI uses
    fleet = sim.Fleet(workdir=tmp_path / "fleet", seed=4, start_unix=int(time.time()) - 216000)
    try:
        _diagnose_with_consent(fleet, db, tmp_path, capsys)
    finally:
        fleet.close()


def _diagnose_with_consent(fleet, db, tmp_path, capsys):
    badge, url, bid = provision(fleet, db, "grace", board=BUTTON_BOARD)
    fleet.run_for(2 * 86400)                       # a few days of keys
    teks = _badge_teks(badge)
    assert teks, "the firmware made no TEKs"
    from tracecode.export import generate_signing_key, load_batch
    priv, pub = generate_signing_key(tmp_path / "keys")
    badge.press_button(after=1.0)
    host_day = int(time.time()) // 86400            # the CLI dates onset from the host clock
    rc = main(["diagnose", "--badge", bid, "--port", url, "--db", str(db.path), "--out",
               str(tmp_path / "out"), "--signing-key", str(priv), "--wait", "10",
               "--onset-days", "2", "--report-type", "confirmed-test", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    res = json.loads(cap.out)
    batch = load_batch(res["file"], pubkeys=[pub])
    assert batch.signature == "valid"
    got = {k.rolling_start_interval_number: k.key_data for k in batch.keys}
    assert got == {r: k for r, k in teks.items() if r in got} and len(got) >= 2
    assert all(k.report_type == 1 for k in batch.keys)
    # symptom onset 2 days before the (host's) diagnosis day; each key carries the days since
    # onset as of its own day
    for k in batch.keys:
        assert k.days_since_onset_of_symptoms == 2 - (host_day - k.rolling_start_interval_number // 144)
    stored_keys = {bytes(r["key_data"]) for r in db.diagnosed_keys(bid)}
    assert stored_keys == set(got.values())
    assert db.current_health(bid)["code"] == "red"
    for tek in teks.values():                      # key bytes never printed
        assert tek.hex() not in cap.err



def test_diagnose_uploads_to_key_server(db, tmp_path):
    from tracecode.export import load_batch
    from tracecode.keyserver.server import RunningServer
    from tracecode.keyserver.store import KeyServer
    from tracecode.station.diagnose import diagnose

    fleet = sim.Fleet(workdir=tmp_path / "fleet", seed=5, start_unix=int(time.time()) - 130000)
    try:
        badge, url, bid = provision(fleet, db, "heidi", board=BUTTON_BOARD)
        fleet.run_for(86400)
        teks = _badge_teks(badge)
        ks = KeyServer.init(tmp_path / "ks")
        code, _exp = ks.issue_code()
        with RunningServer(ks) as srv:
            badge.press_button(after=0.5)
            with pytest.raises(TraceCodeError, match="key server refused"):
                diagnose(db, url, bid, keyserver=srv.url, code="WRONG-CODE-1", wait_s=5,
                         prompt=lambda t: None)
            assert db.diagnosed_keys() == []          # nothing stored on a failed upload
            badge.press_button(after=0.5)
            res = diagnose(db, url, bid, keyserver=srv.url, code=code, wait_s=5,
                           report_type=2, prompt=lambda t: None)
        assert res["keys"] == len(teks) >= 2
        published = ks.publish()
        assert published
        keys = [k for p in published for k in load_batch(ks.www / p, allow_unsigned=True).keys]
        assert {k.key_data for k in keys} == set(teks.values())
        assert {k.report_type for k in keys} == {2}
        assert len(db.diagnosed_keys(bid)) == len(teks)
    finally:
        fleet.close()


def test_two_badges_hear_each_other_and_sync_in_parallel(fleet, db, capsys):
    """Real radio path: the RPIs alice logged are bob's, derived from bob's own TEKs."""
    from tracecode.en import rpis

    alice, url_a, id_a = provision(fleet, db, "alice", position=(0.0, 0.0))
    bob, url_b, id_b = provision(fleet, db, "bob", position=(1.0, 0.0))
    fleet.run_for(2 * 3600)
    rc = main(["sync", "--db", str(db.path), "--port", url_a, "--port", url_b,
               "--parallel", "2", "--json"])
    cap = capsys.readouterr()
    assert cap.out.startswith("["), (rc, cap.err)
    reports = json.loads(cap.out)
    assert rc == 0, reports
    assert {r["badge_id"] for r in reports} == {id_a, id_b}
    assert all(r["ok"] and r["records_new"] > 0 for r in reports)
    heard = {bytes(r["rpi"]) for r in db.encounters(id_a)}
    bob_rpis = {x[:8] for rsin, tek in _badge_teks(bob).items() for x in rpis(tek, rsin)}  # log v2: prefixes
    assert heard and heard <= bob_rpis
    assert all(-90 < r["rssi_mean"] < -30 for r in db.encounters(id_a))
