"""`tracecode sim bench`: docs/station.md's walkthrough, run line by line through the real CLI
against a 2-badge bench (real time), and the bench's command channel."""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TRACECODE = BIN / "tracecode"
SECTION = "## Walkthrough on a virtual bench"


def walkthrough() -> tuple[str, list[str]]:
    """The bench command and the station commands of docs/station.md's walkthrough."""
    text = (ROOT / "docs" / "station.md").read_text()
    assert SECTION in text, "docs/station.md lost its walkthrough section"
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", body, re.S)
    assert len(blocks) == 2, "the walkthrough has two code blocks: the bench, then the station"
    bench = [ln for ln in blocks[0].splitlines() if ln.strip()]
    assert len(bench) == 1 and bench[0].startswith("tracecode sim bench ")
    return bench[0], [ln for ln in blocks[1].splitlines() if ln.strip()]


def free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p >= 65000:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    pytest.skip("no two free neighbouring ports")


def start_bench(cmd: list[str], cwd: Path, env: dict) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.wait(5)
        pytest.fail("the bench did not start: " + proc.stderr.read())
    return proc, json.loads(line)["bench"]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def env():
    e = dict(os.environ)
    e["PATH"] = str(BIN) + os.pathsep + e.get("PATH", "")
    e.setdefault("TRACECODE_SIM_BACKEND", "imitation")
    e.pop("TRACECODE_DB", None)
    return e


def test_station_walkthrough_on_a_bench(tmp_path, env):
    """docs/station.md's walkthrough, verbatim but for the port numbers: flash both ports,
    trace, sync, press + diagnose, match --db, sync again: the codes reach the badges."""
    bench_line, steps = walkthrough()
    base = free_port_pair()

    def ports(s: str) -> str:
        return s.replace("127.0.0.1:7001", f"127.0.0.1:{base}").replace(
            "127.0.0.1:7002", f"127.0.0.1:{base + 1}").replace("--base-port 7001", f"--base-port {base}")

    cmd = [str(TRACECODE)] + shlex.split(ports(bench_line))[1:] + ["--json"]
    proc, info = start_bench(cmd, tmp_path, env)
    try:
        assert [b["port"] for b in info["badges"]] == [f"socket://127.0.0.1:{base}",
                                                        f"socket://127.0.0.1:{base + 1}"]
        ids = [b["id"] for b in info["badges"]]
        assert len(set(ids)) == 2
        doc_text = (ROOT / "docs" / "station.md").read_text()
        assert all(i in doc_text for i in ids), "the ids quoted in the walkthrough changed"
        outputs = []
        for step in steps:
            r = subprocess.run(ports(step), shell=True, cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=90)
            assert r.returncode == 0, f"`{step}` exited {r.returncode}: {r.stderr}"
            assert "Traceback" not in r.stderr
            outputs.append((step, r.stdout))
        proc.wait(10)                             # the walkthrough's last line is `quit`
        assert proc.returncode == 0
        out = dict(outputs)
        diag = next(o for s, o in outputs if s.startswith("tracecode diagnose"))
        assert "key(s) exported" in diag
        m = next(o for s, o in outputs if s.startswith("tracecode match"))
        line2 = next(ln for ln in m.splitlines() if ids[1] in ln)
        assert re.search(r"\b[1-9]\d* windows", line2), m     # badge2 heard badge1's RPIs
        last_sync = [o for s, o in outputs if s.startswith("tracecode sync")][-1]
        assert "health code ->" in last_sync
        st = subprocess.run([str(TRACECODE), "status", "--json"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=30)
        rows = {b["badge_id"]: b for b in json.loads(st.stdout)["badges"]}
        assert rows[ids[0]]["health"] == "red" and rows[ids[0]]["diagnosed"]
        assert rows[ids[1]]["health"] in ("green", "yellow", "red")
        assert not rows[ids[1]]["health_pending"]
        assert rows[ids[1]]["health_shown"] == rows[ids[1]]["health"]
        assert rows[ids[0]]["encounters"] > 0 and rows[ids[1]]["encounters"] > 0
        assert (tmp_path / "station-report.html").is_file() and out
    finally:
        stop(proc)


def test_bench_control_socket(tmp_path, env):
    """press / move / status / bad input / quit over the control socket; badges differ."""
    proc, info = start_bench([str(TRACECODE), "sim", "bench", "3", "--spacing", "2", "--json"],
                             tmp_path, env)
    try:
        assert [b["badge"] for b in info["badges"]] == ["badge1", "badge2", "badge3"]
        assert len({b["id"] for b in info["badges"]}) == 3
        assert [b["position"] for b in info["badges"]] == [[0, 0], [2, 0], [4, 0]]
        host, port = info["control"].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s, \
                s.makefile("rw", encoding="utf-8", newline="\n") as f:
            def ask(line: str) -> dict:
                f.write(line + "\n")
                f.flush()
                return json.loads(f.readline())

            assert ask("move badge2 5 1")["ok"]
            assert ask("press " + info["badges"][0]["id"] + " 0.5")["ok"]
            bad = ask("press nobody")
            assert not bad["ok"] and "no badge" in bad["error"]
            assert not ask("jump badge1")["ok"]
            time.sleep(0.5)
            st = ask("status")["badges"]
            assert st[1]["position"] == [5, 1] and st[0]["position"] == [0, 0]
            assert ask("quit")["ok"]
        proc.wait(10)
        assert proc.returncode == 0
    finally:
        stop(proc)


def test_sim_badge_id_option(tmp_path, env):
    import hashlib

    r = subprocess.run([str(TRACECODE), "sim", "badge", "--id", "alice", "--seconds", "0.2",
                        "--flash", str(tmp_path / "alice")], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    got = re.search(r"virtual badge alice \(id (tc-[0-9a-f]{12})\)", r.stdout).group(1)
    assert got == "tc-" + hashlib.sha256(b"badge:alice").digest()[:6].hex()
    assert got != "tc-" + hashlib.sha256(b"badge:badge").digest()[:6].hex()   # the default name
    r = subprocess.run([str(TRACECODE), "sim", "badge", "--id", "no spaces", "--seconds", "0"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.startswith("tracecode: error: --id")
    r = subprocess.run([str(TRACECODE), "sim", "bench", "0"], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
