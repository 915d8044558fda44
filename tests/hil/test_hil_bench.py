"""End to end on a bench of badges: real ones with --badge-port, virtual ones otherwise."""

import pytest

from tracecode import en

pytestmark = pytest.mark.timeout(900)
PREFIX = 8   # bytes of an RPI that log v2 stores


def test_badges_answer_provisioned_and_tracing(bench):
    for b in bench.badges:
        with b.link() as link:
            # flashed badges are locked (protocol 2: only a provisioned badge is locked)
            assert link.hello.get("locked") or link.hello.get("provisioned"), \
                f"badge on {b.port} is not provisioned: {link.hello}"
            link.auth(b.secret)
            st = link.status()
        assert st["id"] == b.badge_id
        assert st["clock"] == "set", f"badge {b.badge_id}: clock {st['clock']!r}, expected 'set' after provisioning"
        assert st["flash_free"] > 0


def test_badges_log_each_other(bench):
    assert len(bench.badges) >= 2, "needs two badges (pass --badge-port twice)"
    bench.together(bench.minutes)
    reports = bench.sync_all()
    for r in reports:
        assert not r.warnings or all("shorter" not in w for w in r.warnings), r.warnings
    own = {}
    for b in bench.badges:
        keys = b.consent_and_export()
        assert keys, f"badge {b.badge_id} released no keys after the consent press"
        rpis = set()
        for k in keys:
            # compared on the 8-byte prefix a v2 log keeps (docs/log-format.md); a v1 record's
            # full RPI starts with the same prefix
            rpis.update(r[:PREFIX] for r in en.rpis(bytes.fromhex(k["key_data"]),
                                                   k["rolling_start_interval_number"], k["rolling_period"]))
        own[b.badge_id] = rpis
    for b in bench.badges:
        heard = {bytes(r["rpi"])[:PREFIX]: r for r in bench.db.encounters(b.badge_id)}
        assert heard, f"badge {b.badge_id} logged nothing in {bench.minutes} minutes ({bench.kind})"
        assert not (set(heard) & own[b.badge_id]), f"badge {b.badge_id} logged its own identifiers"
        for other in bench.badges:
            if other is b:
                continue
            got = set(heard) & own[other.badge_id]
            assert got, (f"badge {b.badge_id} did not log any RPI of {other.badge_id}: waited "
                         f"{bench.minutes} min, saw {len(heard)} other RPIs")
            for rpi in got:
                assert -100 <= heard[rpi]["rssi_mean"] <= -20, heard[rpi]["rssi_mean"]
