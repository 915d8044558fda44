# Faults the chip really produces, on virtual badges that run the REAL MicroPython VM (backend
# "vm"), injected from the host into the in-VM `bluetooth` module (VMBadge.inject_fault,
# docs/sim.md) while the unmodified firmware runs:
# - the BLE stack refuses a call (OSError(EIO), as MicroPython's NimBLE binding raises it): the
#   task that made the call crashes, the supervisor (tcbadge/app.py) records and restarts it,
#   the badge keeps tracing without a reset;
# - a BLE call never returns (a driver stuck in C): no Python code runs, so the supervisor
#   stops feeding machine.WDT and the watchdog resets the badge; what was on flash is kept and
#   the badge traces again after the reboot.
# The imitation-backend versions (faults injected into the app's CPython objects) are in
# test_fw_robust.py.
import errno
import struct

import pytest

from logparse import read_log
from test_fw_on_badge import _call, _transport
from test_fw_robust import START
from test_fw_robust import pair as robust_pair

sim = pytest.importorskip("tracecode.sim", reason="virtual badges (tracecode.sim) not built yet")
from tracecode.sim.vmbadge import vm_available  # noqa: E402
from tracecode import en  # noqa: E402

REASON = vm_available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

WDT_RESET = 3  # machine.WDT_RESET
WDT_S = 60     # the firmware's machine.WDT timeout (app.py _WDT_MS)
TICK_S = 5     # the supervisor feeds it every 5 s (app.py _TICK_MS)


def pair(tmp_path):
    return robust_pair(tmp_path, backend="vm")


def host_call(badge, code):
    # A host session over the console (mpremote's transport, no soft reset): breaks into the
    # running app, so only at the end of a test.
    t = _transport(badge.console_url())
    try:
        return _call(t, code)
    finally:
        t.close()


def run_until_hit(fleet, badge, n, limit_s, step_s=30):
    end = fleet.clock() + limit_s
    while len(badge.fault_hits) < n and fleet.clock() < end:
        fleet.run_for(step_s)
    assert len(badge.fault_hits) >= n, "the fault was never hit: %r" % badge.fault_hits


def heard_after(badge, peer, t, dest):
    """Entries of `badge`'s log (exported to `dest`) from scans at virtual time >= t, and how
    many of them are RPIs of `peer` (derived on the host from the peer's TEKs). Read after a
    host session: the app flushes its open records (log v2 keeps them in RAM) as it stops."""
    raw = peer.flash.read("/tc/keys.bin")
    rpis = set()
    for i in range(0, len(raw) - 19, 20):
        rsin = struct.unpack_from("<I", raw, i)[0]
        rpis.update(r[:8] for r in en.rpis(raw[i + 4:i + 20], rsin, 144))
    entries = [r for r in read_log(badge.flash.export(dest)) if r["first"] >= START + t]
    return len(entries), sum(1 for r in entries if bytes(r["rpi"][:8]) in rpis)


def tracing(badge):
    # advertising on air now (the app is the only thing that advertises)
    return badge.radio.active and badge.radio.adv_interval_s is not None


@pytest.mark.timeout(300)
def test_ble_stack_errors_crash_tasks_which_are_restarted(tmp_path):
    fleet, a, b = pair(tmp_path)
    try:
        fleet.run_until(600)
        assert tracing(a)
        # two refused scans in a row (the scanner retries once after stopping, so the second
        # escapes the scan task) and one refused advertising start (escapes the beacon task)
        a.inject_fault("scan_error", count=2)
        a.inject_fault("adv_error", count=1, err=errno.EIO)
        run_until_hit(fleet, a, 3, 1500)
        assert a.faults_armed() == {}
        kinds = sorted(k for _t, k in a.fault_hits)
        assert kinds == ["adv_error", "scan_error", "scan_error"]
        t_fault = max(t for t, _k in a.fault_hits)
        fleet.run_for(5)  # the 1 s restart backoff
        assert a.boots == 1, "a refused BLE call reset the badge"
        adv = a.radio.stats["adv_starts"]
        heard = b.radio.stats["scan_results"]
        scans = a.radio.stats["scans"]
        fleet.run_for(1500)
        assert a.boots == 1 and tracing(a)
        # the beacon came back: new RPIs on air after the crash, and bob hears them
        assert any(seg.start > t_fault for seg in a.radio.segments)
        assert a.radio.stats["adv_starts"] >= adv + 2
        assert b.radio.stats["scan_results"] > heard + 10
        # the scanner came back: scans go on and bob's RPIs keep reaching alice's log
        assert a.radio.stats["scans"] >= scans + 10
        # what the supervisor recorded, through the host interface
        st = host_call(a, "from tcbadge.hostif import Host\nh = Host()\nh.status()")
        tasks = st["stats"]["tasks"]
        assert tasks["scan"]["crashes"] == 1, tasks
        assert tasks["beacon"]["crashes"] == 1, tasks
        assert tasks["housekeep"]["crashes"] == 0, tasks
        assert st["stats"]["task_failures"] == 2
        for name in ("scan", "beacon"):
            assert tasks[name]["last_error"] == "OSError: [Errno 5] EIO", tasks
            assert tasks[name]["starts"] == 2 and tasks[name]["hangs"] == 0, tasks
        assert st["log"]["records"] > 0
        n, of_bob = heard_after(a, b, t_fault + 5, tmp_path / "alice-flash")
        assert n >= 10 and of_bob == n, (n, of_bob)
    finally:
        fleet.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind, limit_s", [("scan_hang", 300), ("adv_hang", 1500)])
def test_hung_ble_call_is_reset_by_the_watchdog(tmp_path, kind, limit_s):
    fleet, a, b = pair(tmp_path)
    try:
        fleet.run_until(900)
        assert tracing(a)
        keys = a.flash.read("/tc/keys.bin")
        segs = a.flash.segments()
        assert segs and keys
        on_flash = a.log_records()
        assert on_flash > 0
        boots = a.boots
        a.inject_fault(kind)
        run_until_hit(fleet, a, 1, limit_s)
        t_hang = a.fault_hits[0][0]
        assert a.boots == boots, "reset at the hang itself"
        # stuck: nothing runs in the VM, so nothing feeds the watchdog, until it fires
        fleet.run_for(WDT_S + 5)
        assert a.boots == boots + 1, "the watchdog did not reset the hung badge"
        assert a.reset_cause == WDT_RESET
        # fired one WDT timeout after the last feed, which came at most one tick before the hang
        assert WDT_S - TICK_S - 1 <= a.boot_t - t_hang <= WDT_S + 0.5, (t_hang, a.boot_t)
        heard = b.radio.stats["scan_results"]
        adv = a.radio.stats["adv_starts"]
        fleet.run_for(1500)
        assert a.boots == boots + 1 and a.powered and tracing(a)
        assert a.faults_armed() == {} and len(a.fault_hits) == 1
        # tracing again after the reboot: adverts on air that bob hears, bob in alice's log
        assert a.radio.stats["adv_starts"] >= adv + 2
        assert b.radio.stats["scan_results"] > heard + 10
        # what was on flash before the hang is kept
        assert a.flash.read("/tc/keys.bin")[:len(keys)] == keys
        after = a.flash.segments()
        for day, data in segs.items():
            assert after[day][:len(data)] == data, day
        # the firmware itself sees a watchdog reset
        assert host_call(a, "import json, machine\nprint(json.dumps(machine.reset_cause()))") == WDT_RESET
        n, of_bob = heard_after(a, b, a.boot_t, tmp_path / "alice-flash")
        assert n >= 10 and of_bob == n, (n, of_bob)
    finally:
        fleet.close()
