"""The key server under load: a 500-connection burst with slow and hostile clients (CI slice of
`make soak`), and the limits one by one against the in-process server."""

from __future__ import annotations

import argparse
import importlib.util
import json
import socket
import time
from pathlib import Path

import pytest

from tracecode.keyserver import KeyServer
from tracecode.keyserver.server import RunningServer, json_too_deep

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(90)


def _soak():
    spec = importlib.util.spec_from_file_location("soak_keyserver", ROOT / "tools" / "soak_keyserver.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_burst_of_500_with_slow_and_hostile_clients():
    soak = _soak()
    args = argparse.Namespace(connections=500, uploads=100, slow=10, leavers=50, deadline=2.0,
                              client_timeout=30.0, max_seconds=60.0, seed=7)
    t0 = time.monotonic()
    out = soak.run(args)
    print(json.dumps({k: v for k, v in out.items()}, default=str))
    assert out["failures"] == []
    assert out["answered"] + out["refused_503"] == 500 and out["dropped"] == 0
    assert out["answered"] >= 250               # refusing is for overload, not the normal answer
    assert out["slow_cut"] == 10 and out["slow_cut_max_s"] <= 2.0 + 2.5
    assert out["server_stderr_tracebacks"] == 0 and out["server_stderr_lines"] == 0
    assert out["accepted_keys_lost"] == 0 and out["uploads_in_database"] == out["uploads_accepted"] > 0
    assert time.monotonic() - t0 < 45


@pytest.fixture
def ks(tmp_path) -> KeyServer:
    return KeyServer.init(tmp_path / "ks")


def _raw(port: int, data: bytes, wait: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except socket.timeout:
            pass
        return out


def _post(body: bytes) -> bytes:
    return (b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def test_deep_json_is_400_not_500(ks):
    assert json_too_deep("[" * 9 + "]" * 9) and not json_too_deep('{"a": "[[[[[[[[[[[["}')
    with RunningServer(ks) as srv:
        port = srv.httpd.effective_port
        for body in (b"[" * 30_000 + b"]" * 30_000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
                     b'{"code": "AAAA-BBBB-CCCC", "keys": [[[[[[[[[[[]]]]]]]]]]]}'):
            resp = _raw(port, _post(body))
            assert resp.startswith(b"HTTP/1.1 400 "), resp[:80]
            assert b'"bad_json"' in resp


def test_over_the_connection_limit_is_503_at_once(ks):
    with RunningServer(ks, connection_limit=4) as srv:
        port = srv.httpd.effective_port
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        try:
            time.sleep(0.3)
            t0 = time.monotonic()
            resp = _raw(port, b"GET /tc/index.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            assert resp.startswith(b"HTTP/1.1 503 ") and b"Retry-After" in resp
            assert time.monotonic() - t0 < 2
        finally:
            for s in idle:
                s.close()
        time.sleep(0.3)
        assert _raw(port, b"GET /tc/index.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("first, trickle", [
    (b"GET /tc/index.txt HTTP/1.1\r\nHost: x\r\n", b"X"),                  # headers never end
    (b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n", b" "),
])
def test_slow_client_is_cut_after_the_deadline(ks, first, trickle):
    with RunningServer(ks, request_deadline_s=1.0) as srv:
        s = socket.create_connection(("127.0.0.1", srv.httpd.effective_port))
        s.sendall(first)
        t0 = time.monotonic()
        cut = None
        try:
            for _ in range(40):
                s.sendall(trickle)
                s.settimeout(0.25)
                try:
                    if s.recv(1024) == b"":
                        cut = time.monotonic() - t0
                        break
                except socket.timeout:
                    pass
        except OSError:
            cut = time.monotonic() - t0
        finally:
            s.close()
        assert cut is not None and cut < 1.0 + 2.5
        assert srv.httpd.cut >= 1


def test_clients_that_leave_print_nothing(ks, capfd):
    with RunningServer(ks) as srv:
        port = srv.httpd.effective_port
        for _ in range(30):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /tc/index.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()                            # reset, without reading the answer
        time.sleep(0.5)
        assert _raw(port, b"GET /index.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and err == ""


def test_stats_files_are_served_and_nothing_else_json(ks):
    (ks.www / "secret.json").write_text("{}")
    with RunningServer(ks) as srv:
        port = srv.httpd.effective_port
        get = lambda p: _raw(port, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % p)  # noqa: E731
        assert get(b"/tc/stats.json").startswith(b"HTTP/1.1 200")
        assert get(b"/tc/stats.json.sig").startswith(b"HTTP/1.1 200")
        assert get(b"/secret.json").startswith(b"HTTP/1.1 404")
        assert get(b"/%252e%252e/state.sqlite").startswith(b"HTTP/1.1 404")
        assert get(b"/tc/%2e%2e/%2e%2e/keys/signing.pem").startswith(b"HTTP/1.1 404")


def test_trusted_proxy_rate_limits_each_forwarded_client(ks):
    body = json.dumps({"code": "ZZZZ-ZZZZ-ZZZZ", "keys": [{"key_data": "00" * 16,
                                                          "rolling_start_interval_number": 144}]}).encode()

    def post(port, xff: bytes) -> bytes:
        req = (b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: %s\r\nContent-Type: application/json\r\n"
               b"Connection: close\r\nContent-Length: %d\r\n\r\n" % (xff, len(body))) + body
        return _raw(port, req).split(b" ")[1]

    with RunningServer(ks, trusted_proxy="127.0.0.1") as srv:
        port = srv.httpd.effective_port
        got = [post(port, b"10.0.0.%d" % (i % 2)) for i in range(22)]
    # two clients behind the proxy: each has its own 10 failed attempts
    assert got[:20] == [b"403"] * 20 and got[20:] == [b"429", b"429"]


def test_serve_rejects_bad_limits(tmp_path, capsys):
    from tracecode.cli import main

    d = str(tmp_path / "k")
    assert main(["keyserver", "init", "--dir", d]) == 0
    for opt in (["--threads", "0"], ["--connection-limit", "0"], ["--request-deadline", "0"], ["--port", "70000"]):
        assert main(["keyserver", "serve", "--dir", d, *opt]) == 2, opt
    err = capsys.readouterr().err
    assert err.count("tracecode: error:") == 4 and "Traceback" not in err
