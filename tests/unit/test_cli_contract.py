"""One error contract (issue 13): every failure a user can cause is one line
`tracecode: error: ...` with a documented exit code (tracecode.errors.EXIT_CODES), checked
before a badge or a wearer is involved; and `--json` stdout holds only the JSON."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tracecode.errors import EXIT_CODES, NetworkError

ROOT = Path(__file__).resolve().parents[2]


def tc(*args, cwd, timeout=60):
    env = dict(os.environ)
    env.pop("TRACECODE_DB", None)
    return subprocess.run([sys.executable, "-m", "tracecode", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _station_db(path: Path) -> Path:
    from tracecode.station import logfmt
    from tracecode.station.db import Database
    with Database(path, create=True) as db:
        db.add_badge("b1", "esp32-devkitc", os.urandom(32), port="socket://127.0.0.1:9")
        recs = [logfmt.decode_record(logfmt.encode_record(i.to_bytes(2, "big") * 8, b"abcd", 60 * i, 5,
                                                          2, -80, -60, -70), 20_400, 16 + 32 * i)
                for i in range(300)]
        db.commit_pull("b1", db.start_session("b1", "p"), {20_400: (16 + 32 * 300, recs)})
    return path


def _damaged(tmp: Path) -> Path:
    p = _station_db(tmp / "damaged.sqlite")
    data = bytearray(p.read_bytes())
    from tracecode.station import logfmt
    raw = logfmt.encode_record((150).to_bytes(2, "big") * 8, b"abcd", 60 * 150, 5, 2, -80, -60, -70)
    mid = data.find(raw)                               # bytes overwritten mid-file, over records
    assert mid > 0
    data[mid:mid + 200] = bytes(range(200))
    p.write_bytes(bytes(data))
    return p


@pytest.fixture(scope="module")
def busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


@pytest.fixture(scope="module")
def keyserver_dir(tmp_path_factory):
    from tracecode.keyserver.store import KeyServer
    d = tmp_path_factory.mktemp("ks") / "ks"
    KeyServer.init(d)
    return d


# (name, argv, exit code, words the one line must contain, files that must not appear)
CASES = [
    ("db check on a damaged file", lambda t, k, b: ["db", "check", "--db", _damaged(t)], 2,
     ["is damaged", "db recover"], []),
    ("db check on a 0-byte file", lambda t, k, b: ["db", "check", "--db", _touch(t / "zero.sqlite")],
     2, ["empty (0 bytes)"], []),
    ("status in a folder without a database", lambda t, k, b: ["status"], 2,
     ["no station database", "db init"], ["tracecode.sqlite"]),
    ("sync in a folder without a database", lambda t, k, b: ["sync", "-p", "socket://127.0.0.1:9"],
     2, ["no station database"], ["tracecode.sqlite"]),
    ("keyserver serve on a busy port", lambda t, k, b: ["keyserver", "serve", "--dir", k, "--port", b],
     2, ["cannot listen", "in use"], []),
    ("keyserver serve --dir missing", lambda t, k, b: ["keyserver", "serve", "--dir", t / "nope"],
     2, ["not a key server folder"], []),
    ("key server unreachable", lambda t, k, b: ["match", "--exports", "http://127.0.0.1:9",
                                                "--sightings", _csv(t), "--pubkey",
                                                _pub(k), "--cache", t / "c"],
     6, ["unreachable"], []),
    ("diagnose --code malformed, before the wearer", lambda t, k, b: [
        "diagnose", "--badge", "b1", "--keyserver", "http://127.0.0.1:9", "--code", "12"],
     2, ["--code", "verification code"], ["tracecode.sqlite"]),
    ("diagnose key server unreachable, before the wearer", lambda t, k, b: [
        "diagnose", "--badge", "b1", "--keyserver", "http://127.0.0.1:9", "--code",
        "0123-4567-89AB"], 6, ["unreachable", "before asking the wearer"], ["tracecode.sqlite"]),
    ("flash --image README.md", lambda t, k, b: ["flash", "--board", "esp32-devkitc", "--image",
                                                 ROOT / "README.md", "-p", "/dev/ttyUSB9"],
     2, ["not an ESP32 firmware image"], ["tracecode.sqlite"]),
    ("flash --config scan_every_s=5", lambda t, k, b: ["flash", "--board", "esp32-devkitc",
                                                       "--skip-image", "--config", "scan_every_s=5",
                                                       "-p", "socket://127.0.0.1:9"],
     2, ["scan_every_s", "10..300"], ["tracecode.sqlite"]),
    ("flash --config unknown key", lambda t, k, b: ["flash", "--board", "esp32-devkitc",
                                                    "--skip-image", "--config", "colour=3",
                                                    "-p", "socket://127.0.0.1:9"],
     2, ["colour", "unknown setting"], ["tracecode.sqlite"]),
    ("flash without --board on an unknown port", lambda t, k, b: ["flash", "--skip-image", "-p",
                                                                  "socket://127.0.0.1:9"],
     2, ["--board", "esp32-devkitc"], ["tracecode.sqlite"]),
    ("sim badge --board nope", lambda t, k, b: ["sim", "badge", "--board", "nope", "--seconds", "1"],
     2, ["unknown board 'nope'"], []),
]


def _pub(k: Path) -> Path:
    from tracecode.keyserver.store import KeyServer
    return KeyServer(k).public_key_path()


def _touch(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def _csv(t: Path) -> Path:
    p = t / "s.csv"
    p.write_text("time,rpi,aem,rssi\n")
    return p


@pytest.mark.parametrize("name,argv,code,words,absent", CASES, ids=[c[0] for c in CASES])
def test_error_contract(tmp_path, keyserver_dir, busy_port, name, argv, code, words, absent):
    p = tc(*argv(tmp_path, keyserver_dir, busy_port), cwd=tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert code in EXIT_CODES
    assert len(lines) == 1 and lines[0].startswith("tracecode: error:"), p.stderr
    assert "Traceback" not in p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    for f in absent:
        assert not (tmp_path / f).exists(), f


def test_upload_refused_is_a_server_error(keyserver_dir):
    """A key server that refuses an upload (bad code) gives exit 6, one line, no key data."""
    from tracecode.export import DiagnosisKey
    from tracecode.keyserver.server import RunningServer
    from tracecode.keyserver.store import KeyServer
    from tracecode.station.diagnose import upload

    key = DiagnosisKey(bytes(range(16)), 2_937_600, 144)
    with RunningServer(KeyServer(keyserver_dir)) as srv:
        with pytest.raises(NetworkError) as exc:
            upload(srv.url, "0123-4567-89AB", [key])
    assert exc.value.exit_code == 6 and "refused the upload" in str(exc.value)
    assert bytes(range(16)).hex() not in str(exc.value)


def test_exit_codes_are_documented_in_the_readme():
    text = (ROOT / "README.md").read_text()
    for code, meaning in EXIT_CODES.items():
        assert f"| {code} |" in text, code


# ------------------------------------------------------------------------------ --json
def test_json_stdout_is_only_json(tmp_path):
    db = _station_db(tmp_path / "st.sqlite")
    runs = {
        "flash --dry-run": ["flash", "--dry-run", "--json", "--board", "esp32-devkitc",
                            "--skip-image", "-p", "socket://127.0.0.1:9", "--db", db],
        "demo --host-only": ["demo", "--host-only", "--json"],
        "db set-health": ["db", "set-health", "b1", "red", "--json", "--db", db],
        "status": ["status", "--json", "--db", db],
        "db check": ["db", "check", "--json", "--db", db],
        "db backup": ["db", "backup", "--json", "--db", db, "--out", tmp_path / "b.bak"],
        "db init": ["db", "init", "--json", "--db", tmp_path / "new.sqlite"],
        "devs": ["devs", "--json", "--db", db],
    }
    docs = {}
    for name, argv in runs.items():
        p = tc(*argv, cwd=tmp_path, timeout=120)
        assert p.returncode == 0, (name, p.stderr)
        docs[name] = json.loads(p.stdout)     # the whole of stdout is one JSON document
    assert len(docs["flash --dry-run"]["badges"][0]["steps"]) > 5
    assert docs["demo --host-only"]["health_codes"] == {"alice": "red", "bob": "red",
                                                         "carol": "green"}
    assert docs["db set-health"] == {"badge_id": "b1", "code": "red",
                                     "health_id": docs["db set-health"]["health_id"],
                                     "delivered": False}
    assert docs["status"]["badges"][0]["health"] == "red"
    assert docs["status"]["badges"][0]["health_pending"] is True
    assert docs["db check"]["ok"] is True and docs["db check"]["records"] == 300
    assert Path(docs["db backup"]["backup"]).is_file()
    assert docs["db init"]["schema_version"] >= 2
    assert docs["devs"] == {"devices": []}
