# Issue 10's security figure: a host without the pairing secret gets nothing from a locked
# badge through any byte sequence (tools/fuzz_locked.py: random bytes, random well-formed
# frames, mutations and replays of a recorded station session, REPL entry sequences), the
# badge neither crashes nor stops tracing, and a legitimate session still works after.
# The replayed-authentication cases (recorded AUTH for a used nonce, AUTH after a fresh HELLO,
# replayed requests, SEQ and TAG games) have their own deterministic test in
# tests/firmware/test_fw_locked.py (test_replay_wrong_seq_bad_tag_and_idle_end_the_session);
# the campaign replays a station-recorded AUTH thousands of times besides.
import hashlib
import json
import struct
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
pytest.importorskip("tracecode.sim", reason="virtual badges (tracecode.sim) not built yet")

import fuzz_locked as fz  # noqa: E402
from tracecode.station import frames as fr  # noqa: E402

FRAMES = 100_000     # the bar (about 40 s of CPU on the imitation backend)


def _err(code="auth", msg="authenticate first", seq=1):
    return fz.wrap(fz.body(2, fr.ERROR, seq, json.dumps({"error": code, "msg": msg}).encode()))


def _hello(nb=b"n" * 16, **extra):
    doc = {"proto": 2, "fw": "0.1.0", "id": "alice", "locked": True, **extra}
    return fz.wrap(fz.body(2, fr.HELLO | fr.REPLY, 0, nb + json.dumps(doc).encode()))


def _checker(log=b""):
    tek = hashlib.sha256(b"tek").digest()[:16]
    return fz.Checker("alice", "0.1.0", {"TEK#0": tek, "pairing secret": fz.SECRET},
                      fz.log_windows({1: bytes(16) + log} if log else {})), tek


def test_the_checker_passes_clean_output_and_catches_every_planted_leak():
    log = bytes(range(100, 164))
    clean = _hello() + _err() + _err("seq", "HELLO has SEQ 0") + _err("frame", "x")
    c, tek = _checker(log)
    s = c.check(clean).summary()
    assert (s["secrets_out"], s["violations"], s["outputs_parsed"]) == (0, [], 4)
    planted = {
        "TEK raw in a nonce": _hello(nb=tek),
        "TEK hex in an error": _err(msg="k=" + tek.hex()),
        "secret raw between frames": fz.SECRET,
        "secret hex in a HELLO": _hello(note=fz.SECRET.hex()),
        "log bytes in a nonce": _hello(nb=log[20:36]),
        "log bytes in an error": _err(msg=log[8:40].decode("latin-1")),
    }
    for name, out in planted.items():
        c, _ = _checker(log)
        assert c.check(clean + out + clean).summary()["secrets_out"] >= 1, name
    violations = {
        "REPL prompt": b"\r\n>>> ",
        "raw REPL banner": b"raw REPL; CTRL-B to exit\r\n>",
        "a traceback": b"Traceback (most recent call last):\r\n",
        "a stray byte": b"\x00",
        "an AUTH answer": fz.wrap(fz.body(2, fr.AUTH | fr.REPLY, 0, bytes(32))),
        "a STATUS answer": fz.wrap(fz.body(2, fr.STATUS | fr.REPLY, 1, b"{}" + bytes(16))),
        "HELLO telling more": _hello(records=5),
        "HELLO of another badge": fz.wrap(fz.body(2, 0x81, 0, bytes(16) + json.dumps(
            {"proto": 2, "fw": "0.1.0", "id": "bob", "locked": True}).encode())),
        "an internal error": _err("internal", "boom"),
        "a tagged error": fz.wrap(fz.body(2, fr.ERROR, 1, b'{"error":"auth","msg":""}' + bytes(16))),
        "a bad CRC": _err()[:-1] + b"\x00",
        "another version": fz.wrap(fz.body(1, fr.ERROR, 1, b"{}")),
    }
    for name, out in violations.items():
        c, _ = _checker()
        assert c.check(clean + out).summary()["violations"], name


def test_a_planted_secret_fails_the_campaign():
    res = fz.campaign(500, seed=7, backend="imitation", min_virtual_s=60, warm_s=300,
                      plant=_err(msg=fz.SECRET.hex()))
    assert not res["ok"] and res["secrets_out"] == 1, res


def _bench(tmp_path):
    b = fz.Bench(tmp_path, "imitation", seed=3, warm_s=300)
    b.capture = bytearray()
    b.con._note_frames = lambda data, incoming: None
    return b


def test_a_frame_that_straddles_the_receive_buffer_after_a_long_garbage_candidate(tmp_path):
    # Found by the campaign. A garbage MAGIC with LEN 4200 makes the receiver hold 4208 bytes;
    # its CRC fails, the hunt resumes inside them and meets a real frame at offset 2000 whose
    # end lies past the 4208-byte buffer: _fill compacts the buffer (the frame moves to 0),
    # but Server._frame goes on with the frame start it read before (firmware/tcbadge/
    # hostproto.py, `s = self._s` before `_fill(ln + 8, True)`), reads the CRC past the buffer
    # and the host task crashes (supervisor restart with back-off; the frame is lost).
    b = _bench(tmp_path)
    try:
        a = b.alice
        boots = a.boots
        junk = b"\xa7\x7c" + struct.pack("<H", 4200) + bytes(1996)
        probe = fz.wrap(fz.body(2, fr.STATUS, 1, bytes(2994)))       # starts at offset 2000
        b.feed(junk + probe, 1.0)
        b.fleet.run_for(5)
        out = bytes(b.capture)
        tasks = fz.flash_file(a, "/tc/tasks.txt")
        assert tasks is None, tasks.decode("latin-1")
        assert a.boots == boots
        frames = fr.decode_all(out)
        assert [(f.type, f.seq) for f in frames] == [(fr.ERROR, 1)], out[:200]
    finally:
        b.close()


@pytest.mark.timeout(600)
def test_fuzz_campaign_100k_frames_gets_nothing_and_the_badge_keeps_tracing():
    t0 = time.monotonic()
    res = fz.campaign(FRAMES, seed=1, backend="imitation")
    print(json.dumps({k: v for k, v in res.items() if k != "violations"}, indent=1))
    print("violations:", res.get("violations"))
    assert res.get("frames") == FRAMES, res["failures"]
    assert res["secrets_out"] == 0
    assert res["unparsed_bytes"] == 0 and res["outputs_parsed"] > FRAMES // 2
    assert res["crashes"] == 0, (res["tasks_txt"], res["host_task"])
    assert res["ok"], res["failures"]
    print(f"{FRAMES} frames in {time.monotonic() - t0:.1f} s")
