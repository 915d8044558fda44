"""Key server: codes, uploads over real HTTP, publishing signed batches, the hash chain."""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import zipfile
from pathlib import Path

import pytest

from tracecode import export
from tracecode.cli import main
from tracecode.errors import SignatureError, TraceCodeError
from tracecode.keyserver import KeyServer
from tracecode.keyserver import chain as chainmod
from tracecode.keyserver.client import fetch_new_batches, upload_keys
from tracecode.keyserver.server import RunningServer

pytestmark = pytest.mark.timeout(60)
RSIN = 2_800_000 // 144 * 144


def _keys(n: int, rsin: int = RSIN) -> list[dict]:
    return [{"key_data": os.urandom(16).hex(), "rolling_start_interval_number": rsin - 144 * i,
             "rolling_period": 144, "report_type": 1, "days_since_onset_of_symptoms": i - 2}
            for i in range(n)]


class Clock:
    def __init__(self, t: float = 1_700_000_000):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ks(tmp_path, clock) -> KeyServer:
    return KeyServer.init(tmp_path / "ks", clock=clock)


@pytest.fixture
def srv(ks):
    with RunningServer(ks) as s:
        yield s


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        conn.request("POST", "/v1/upload", body=body, headers=h)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def _get(url: str, path: str) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _upload(url, code, keys) -> tuple[int, dict]:
    return _post(url, json.dumps({"code": code, "keys": keys}).encode())


# ---------------------------------------------------------------------------- codes + uploads


def test_code_is_stored_hashed_with_expiry(ks):
    code, expires = ks.issue_code(ttl_s=600, now=1_700_000_000)
    assert expires == 1_700_000_600
    raw = (ks.dir / "state.sqlite").read_bytes()
    assert code.encode() not in raw and code.replace("-", "").encode() not in raw
    rows = sqlite3.connect(ks.db_path).execute("SELECT issued_at, expires_at, used_at FROM codes").fetchall()
    assert rows == [(1_700_000_000, 1_700_000_600, None)]


def test_upload_valid_code_then_reuse_refused(ks, srv):
    code, _ = ks.issue_code()
    status, body = _upload(srv.url, code, _keys(3))
    assert status == 201 and body["ok"] is True and body["keys"] == 3
    status, body = _upload(srv.url, code, _keys(1))
    assert status == 403 and body["error"] == "code_used"
    assert ks.status()["uploads"] == 1


def test_code_typed_loosely_is_accepted(ks, srv):
    code, _ = ks.issue_code()
    status, _ = _upload(srv.url, code.replace("-", " ").lower(), _keys(1))
    assert status == 201


def test_bad_and_expired_codes_refused(ks, srv):
    status, body = _upload(srv.url, "AAAA-BBBB-CCCC", _keys(1))
    assert status == 403 and body["error"] == "invalid_code"
    code, _ = ks.issue_code(ttl_s=60, now=1_000_000_000)   # long expired
    status, body = _upload(srv.url, code, _keys(1))
    assert status == 403 and body["error"] == "code_expired"
    assert ks.status()["uploads"] == 0


@pytest.mark.parametrize("mutate, error", [
    (lambda k: k[0].update(key_data="00" * 15), "bad_key"),
    (lambda k: k[0].update(key_data="zz" * 16), "bad_key"),
    (lambda k: k[0].update(rolling_period=0), "bad_key"),
    (lambda k: k[0].update(rolling_period=145), "bad_key"),
    (lambda k: k[0].update(report_type=9), "bad_key"),
    (lambda k: k[0].update(rolling_start_interval_number="12"), "bad_key"),
    (lambda k: k[1].update(key_data=k[0]["key_data"]), "bad_key"),
    (lambda k: k.extend(_keys(14)), "too_many_keys"),
    (lambda k: k.clear(), "bad_keys"),
])
def test_invalid_keys_refused_and_code_not_burnt(ks, srv, mutate, error):
    code, _ = ks.issue_code()
    keys = _keys(2)
    mutate(keys)
    status, body = _upload(srv.url, code, keys)
    assert status == 400 and body["error"] == error, body
    assert "message" in body and body["message"]
    # the code survives a rejected upload
    status, _ = _upload(srv.url, code, _keys(1))
    assert status == 201


def test_fifteen_keys_is_the_limit(ks, srv):
    code, _ = ks.issue_code()
    assert _upload(srv.url, code, _keys(15))[0] == 201


def test_transport_limits(ks, srv):
    status, body = _post(srv.url, b"not json")
    assert status == 400 and body["error"] == "bad_json"
    status, body = _post(srv.url, b"{}", {"Content-Type": "text/plain"})
    assert status == 415
    status, body = _post(srv.url, b"x" * (65 * 1024))
    assert status == 413 and body["error"] == "too_large"


def test_failed_codes_are_rate_limited(ks, srv):
    for _ in range(10):
        assert _upload(srv.url, "ZZZZ-ZZZZ-ZZZZ", _keys(1))[0] == 403
    code, _ = ks.issue_code()
    status, body = _upload(srv.url, code, _keys(1))
    assert status == 429 and body["error"] == "rate_limited"


def test_server_serves_only_the_published_tree(ks, srv, tmp_path):
    for path in ("/state.sqlite", "/keys/signing.pem", "/../state.sqlite", "/%2e%2e/state.sqlite",
                 "/tc/../../keys/signing.pem", "/www/index.txt"):
        status, body = _get(srv.url, path)
        assert status == 404, path
        assert b"PRIVATE" not in body
    assert _get(srv.url, "/index.txt")[0] == 200
    assert _get(srv.url, "/tc/index.txt")[0] == 200


# ---------------------------------------------------------------------------- publishing


def test_publish_signed_batches_verified_by_export_inspect(ks, srv, clock, capsys):
    uploaded = []
    for n in (2, 3):
        code, _ = ks.issue_code()
        keys = _keys(n)
        uploaded += keys
        assert upload_keys(srv.url, code, keys)["ok"] is True
    clock.t += 86_400
    assert ks.publish() == ["tc/1700000000-1700086400-00001.zip"]
    index = (ks.www / "tc" / "index.txt").read_bytes()
    assert index == b"tc/1700000000-1700086400-00001.zip"      # no trailing newline
    assert (ks.www / "index.txt").read_bytes() == index

    batch = ks.www / index.decode()
    rc = main(["export", "inspect", "--pubkey", str(ks.public_key_path()), "--json", str(batch)])
    out = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out)
    info = doc[0] if isinstance(doc, list) else doc.get("batches", [doc])[0]
    assert info["signature"] == "valid"
    assert sorted(k["key_data"] for k in info["keys"]) == sorted(k["key_data"] for k in uploaded)

    # a foreign public key must not verify it
    other_priv, other_pub = export.generate_signing_key(ks.dir.parent / "other")
    rc = main(["export", "inspect", "--pubkey", str(other_pub), str(batch)])
    assert rc != 0
    capsys.readouterr()

    # keys come back with their fields; keys are ordered by key bytes (no upload order)
    b = export.load_batch(batch, pubkeys=[ks.public_key_path()])
    assert [k.key_data for k in b.keys] == sorted(k.key_data for k in b.keys)
    by = {k.key_data.hex(): k for k in b.keys}
    for k in uploaded:
        got = by[k["key_data"]]
        assert got.rolling_start_interval_number == k["rolling_start_interval_number"]
        assert got.days_since_onset_of_symptoms == k["days_since_onset_of_symptoms"]


def test_publish_nothing_pending_makes_no_batch(ks):
    assert ks.publish() == []
    assert (ks.www / "tc" / "index.txt").read_bytes() == b""


def test_cli_issue_publish_status(tmp_path, capsys):
    d = str(tmp_path / "k")
    assert main(["keyserver", "init", "--dir", d, "--json"]) == 0
    capsys.readouterr()
    assert main(["keyserver", "issue-code", "--dir", d, "--json"]) == 0
    code = json.loads(capsys.readouterr().out)["code"]
    KeyServer(d).accept_upload(code, [__import__("tracecode.keyserver", fromlist=["UploadKey"]).UploadKey(os.urandom(16), RSIN)])
    assert main(["keyserver", "publish", "--dir", d, "--json"]) == 0
    pub = json.loads(capsys.readouterr().out)
    assert len(pub["new_batches"]) == 1 and pub["keys_published"] == 1
    assert main(["keyserver", "status", "--dir", str(tmp_path / "nope")]) != 0
    err = capsys.readouterr().err
    assert err.startswith("tracecode: error:") and "Traceback" not in err


# ---------------------------------------------------------------------------- chain + client


def _publish_n(ks, n: int, t0: int = 1_700_000_000) -> list[str]:
    paths = []
    for i in range(n):
        code, _ = ks.issue_code(now=t0 + i * 3600)
        ks.accept_upload(code, [__import__("tracecode.keyserver", fromlist=["UploadKey"]).UploadKey(os.urandom(16), RSIN)],
                         now=t0 + i * 3600)
        paths += ks.publish(now=t0 + i * 3600 + 1800)
    return paths


def test_client_downloads_only_new_batches(ks, srv, tmp_path):
    cache = tmp_path / "cache"
    first = _publish_n(ks, 2)
    got = fetch_new_batches(srv.url, cache, [ks.public_key_path()])
    assert [p.relative_to(cache).as_posix() for p in got] == first
    assert fetch_new_batches(srv.url, cache, [ks.public_key_path()]) == []
    more = _publish_n(ks, 1, t0=1_700_100_000)
    got = fetch_new_batches(srv.url + "/tc/index.txt", cache, [ks.public_key_path()])
    # the other index URL is a separate follow state; it sees all three
    assert [p.relative_to(cache).as_posix() for p in got] == first + more
    got = fetch_new_batches(srv.url, cache, [ks.public_key_path()])
    assert [p.relative_to(cache).as_posix() for p in got] == more
    records = [chainmod.ChainRecord.from_json((ks.www / chainmod.chain_path_for(p)).read_bytes()) for p in first + more]
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[0].prev_export_sha256 == chainmod.GENESIS
    assert records[2].prev_batch == first[1]


def _rewrite_index(ks, lines):
    data = "\n".join(lines).encode()
    (ks.www / "tc" / "index.txt").write_bytes(data)
    (ks.www / "index.txt").write_bytes(data)


def test_chain_detects_removed_batch_fresh_client(ks, srv, tmp_path):
    paths = _publish_n(ks, 3)
    _rewrite_index(ks, [paths[0], paths[2]])
    with pytest.raises(SignatureError, match="chain broken"):
        fetch_new_batches(srv.url, tmp_path / "c", [ks.public_key_path()])
    assert not list((tmp_path / "c").rglob("*.zip"))      # nothing kept


def test_chain_detects_removed_batch_seen_before(ks, srv, tmp_path):
    paths = _publish_n(ks, 2)
    fetch_new_batches(srv.url, tmp_path / "c", [ks.public_key_path()])
    _rewrite_index(ks, [paths[1]])
    with pytest.raises(SignatureError, match="no longer listed"):
        fetch_new_batches(srv.url, tmp_path / "c", [ks.public_key_path()])


def _tamper(ks, rel: str, resign: bool) -> None:
    """Replace a published batch by one with an extra key (re-signed with the server key or not)."""
    path = ks.www / rel
    b = export.load_batch(path, pubkeys=[ks.public_key_path()])
    keys = b.keys + [export.DiagnosisKey(key_data=os.urandom(16), rolling_start_interval_number=RSIN)]
    if resign:
        export.write_batch(path, keys, signing_key=ks.private_key_path(), start_timestamp=b.start_timestamp,
                           end_timestamp=b.end_timestamp, region=b.region)
    else:
        with zipfile.ZipFile(path) as zf:
            sig = zf.read("export.sig")
        export.write_batch(path, keys, signing_key=None, start_timestamp=b.start_timestamp,
                           end_timestamp=b.end_timestamp, region=b.region)
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr("export.sig", sig)


def test_chain_detects_altered_batch_even_with_valid_en_signature(ks, srv, tmp_path):
    paths = _publish_n(ks, 2)
    _tamper(ks, paths[0], resign=True)
    with pytest.raises(SignatureError, match="altered"):
        fetch_new_batches(srv.url, tmp_path / "c", [ks.public_key_path()])


def test_altered_batch_without_key_fails_en_signature(ks, srv, tmp_path):
    paths = _publish_n(ks, 1)
    _tamper(ks, paths[0], resign=False)
    with pytest.raises(SignatureError):
        fetch_new_batches(srv.url, tmp_path / "c", [ks.public_key_path()])


def test_history_rewritten_after_client_fetched_is_detected(ks, srv, tmp_path):
    paths = _publish_n(ks, 1)
    fetch_new_batches(srv.url, tmp_path / "c", [ks.public_key_path()])
    # the server operator swaps batch 1 and re-chains everything after it consistently
    _tamper(ks, paths[0], resign=True)
    with zipfile.ZipFile(ks.www / paths[0]) as zf:
        new_hash = chainmod.sha256_hex(zf.read("export.bin"))
    priv = export.load_private_key(ks.private_key_path())
    rec = chainmod.ChainRecord(1, paths[0], new_hash, None, chainmod.GENESIS).signed(priv)
    (ks.www / chainmod.chain_path_for(paths[0])).write_bytes(rec.to_json())
    conn = sqlite3.connect(ks.db_path)
    conn.execute("UPDATE batches SET export_sha256 = ? WHERE seq = 1", (new_hash,))
    conn.commit()
    conn.close()
    _publish_n(ks, 1, t0=1_700_200_000)
    with pytest.raises(SignatureError, match="does not link"):
        fetch_new_batches(srv.url, tmp_path / "c", [ks.public_key_path()])


def test_forged_chain_record_fails_signature(ks, srv, tmp_path):
    paths = _publish_n(ks, 1)
    p = ks.www / chainmod.chain_path_for(paths[0])
    doc = json.loads(p.read_text())
    doc["export_sha256"] = "ab" * 32
    p.write_text(json.dumps(doc))
    with pytest.raises(SignatureError, match="chain signature"):
        fetch_new_batches(srv.url, tmp_path / "c", [ks.public_key_path()])


def test_client_errors_are_one_line(tmp_path, ks):
    with pytest.raises(TraceCodeError, match="unreachable"):
        fetch_new_batches("http://127.0.0.1:9/", tmp_path / "c", [ks.public_key_path()])
    with pytest.raises(TraceCodeError):
        fetch_new_batches("file:///etc/passwd", tmp_path / "c", [ks.public_key_path()])
