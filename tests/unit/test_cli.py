"""The CLI contract that users and scripts rely on: JSON shapes, exit codes, one-line errors."""

import json
import subprocess
import sys
import zipfile

import pytest

from tracecode import en, export
from tracecode.matcher import Sighting, write_sightings_csv


def run(*args, check_rc=0):
    p = subprocess.run([sys.executable, "-m", "tracecode", *map(str, args)], capture_output=True, text=True, timeout=120)
    if check_rc is not None:
        assert p.returncode == check_rc, (p.returncode, p.stdout, p.stderr)
    return p


def one_line_error(p):
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracecode: error:"), p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


def test_keys_derive_json_matches_vectors(vectors):
    p = run("keys", "derive", "--tek", vectors["tek"], "--rsin", vectors["rolling_start_interval_number"],
            "--metadata", vectors["metadata"], "--json")
    out = json.loads(p.stdout)
    assert out["rpik"] == vectors["rpik"] and out["aemk"] == vectors["aemk"]
    assert out["intervals"] == [{"enin": v["enin"], "rpi": v["rpi"], "aem": v["aem"]} for v in vectors["intervals"]]


def test_keys_derive_without_metadata_has_no_aem(vectors):
    out = json.loads(run("keys", "derive", "--tek", vectors["tek"], "--rsin", 5, "--period", 3, "--json").stdout)
    assert [set(i) for i in out["intervals"]] == [{"enin", "rpi"}] * 3


def test_keys_derive_bad_tek():
    p = run("keys", "derive", "--tek", "abcd", "--rsin", 1, check_rc=2)
    assert "16 bytes" in one_line_error(p)


def test_export_inspect_json(server_example):
    p = run("export", "inspect", server_example["zip"], "--pubkey", server_example["pubkey"], "--json")
    out = json.loads(p.stdout)
    assert out["signature"] == "valid"
    assert out["region"] == "US"
    assert {k["rolling_period"] for k in out["keys"]} == {1, 114}
    assert set(out["keys"][0]) == {"key_data", "rolling_start_interval_number", "rolling_period", "report_type",
                                   "transmission_risk_level", "days_since_onset_of_symptoms"}
    assert out["revised_keys"] == []
    assert json.loads(run("export", "inspect", server_example["zip"], "--json").stdout)["signature"] == "unchecked"


def test_export_inspect_forged_file_fails(server_example, tmp_path):
    with zipfile.ZipFile(server_example["zip"]) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    b = bytearray(entries["export.bin"])
    b[20] ^= 0x20  # inside the start timestamp: still decodes, signature must fail
    entries["export.bin"] = bytes(b)
    forged = tmp_path / "forged.zip"
    with zipfile.ZipFile(forged, "w") as zf:
        for n, d in entries.items():
            zf.writestr(n, d)
    p = run("export", "inspect", forged, "--pubkey", server_example["pubkey"], "--json", check_rc=3)
    assert json.loads(p.stdout)["signature"] == "invalid"
    assert "does not verify" in one_line_error(p)


@pytest.mark.parametrize("content,needle", [
    (b"", "neither"),
    (b"PK\x03\x04 truncated", "zip"),
    (b"EK Export v1    \x3a\xff\xff\xff\x0f", "decodable"),
])
def test_export_inspect_bad_files(tmp_path, content, needle):
    f = tmp_path / "bad.bin"
    f.write_bytes(content)
    p = run("export", "inspect", f, "--allow-unsigned", check_rc=2)
    line = one_line_error(p)
    assert str(f) in line and needle in line


def test_export_inspect_missing_file(tmp_path):
    p = run("export", "inspect", tmp_path / "nope.zip", check_rc=2)
    assert "nope.zip" in one_line_error(p)


def test_make_then_match_end_to_end(tmp_path, vectors):
    keydir = tmp_path / "keys"
    run("export", "keygen", "--out", keydir)
    tek = bytes.fromhex(vectors["tek"])
    rsin = vectors["rolling_start_interval_number"]
    (tmp_path / "keys.json").write_text(json.dumps([
        {"key_data": tek.hex(), "rolling_start_interval_number": rsin, "rolling_period": 144, "report_type": 1},
        {"key_data": "00" * 16, "rolling_start_interval_number": rsin, "report_type": 5},
    ]))
    out = tmp_path / "server"
    made = json.loads(run("export", "make", "--keys", tmp_path / "keys.json", "--signing-key", keydir / "signing.pem",
                          "--out", out, "--start", rsin * 600, "--json").stdout)
    assert len(made["batches"]) == 1
    heard = []
    for i in range(40):  # 40 minutes of close contact, one sighting a minute
        v = vectors["intervals"][i // 10 + 60]
        heard.append(Sighting(v["enin"] * 600 + 60 * (i % 10), bytes.fromhex(v["rpi"]), bytes.fromhex(v["aem"]), -40))
    write_sightings_csv(tmp_path / "s.csv", heard)
    p = run("match", "--exports", out, "--sightings", tmp_path / "s.csv", "--pubkey", keydir / "signing.pub.pem",
            "--jobs", 1, "--json")
    res = json.loads(p.stdout)
    assert res["health_code"] == "red"
    assert len(res["exposures"]) == 2  # windows are at most 30 minutes
    e = res["exposures"][0]
    assert e["key_data"] == tek.hex() and e["window_start"] == heard[0].time
    assert {"duration_s", "attenuations", "score"} <= set(e)
    # Unsigned input is refused when a key is configured, accepted with --allow-unsigned.
    run("export", "make", "--keys", tmp_path / "keys.json", "--unsigned", "--out", tmp_path / "u", "--start", rsin * 600)
    p = run("match", "--exports", tmp_path / "u", "--sightings", tmp_path / "s.csv", "--pubkey",
            keydir / "signing.pub.pem", "--json", check_rc=3)
    assert "allow-unsigned" in one_line_error(p)
    p = run("match", "--exports", tmp_path / "u", "--sightings", tmp_path / "s.csv", "--pubkey",
            keydir / "signing.pub.pem", "--allow-unsigned", "--json")
    assert json.loads(p.stdout)["health_code"] == "red"


def test_match_over_http(tmp_path, vectors):
    import functools
    import http.server
    import threading

    keydir = tmp_path / "keys"
    priv, pub = export.generate_signing_key(keydir)
    tek = bytes.fromhex(vectors["tek"])
    rsin = vectors["rolling_start_interval_number"]
    root = tmp_path / "www"
    b = export.write_batch(root / "v1" / "a-b-00001.zip", [export.DiagnosisKey(tek, rsin)], signing_key=priv,
                           start_timestamp=0, end_timestamp=1)
    export.write_index(root / "v1", ["v1/a-b-00001.zip"])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        v = vectors["intervals"][0]
        write_sightings_csv(tmp_path / "s.csv", [Sighting(v["enin"] * 600, bytes.fromhex(v["rpi"]), bytes.fromhex(v["aem"]), -50)])
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1/index.txt"
        p = run("match", "--exports", url, "--sightings", tmp_path / "s.csv", "--pubkey", pub,
                "--cache", tmp_path / "cache", "--no-chain", "--json")
        res = json.loads(p.stdout)
        assert len(res["exposures"]) == 1 and res["batches"][0]["signature"] == "valid"
        # Without --no-chain a server that publishes no hash chain is refused.
        p = run("match", "--exports", url, "--sightings", tmp_path / "s.csv", "--pubkey", pub,
                "--cache", tmp_path / "cache2", "--json", check_rc=3)
        assert "chain" in one_line_error(p)
    finally:
        srv.shutdown()
    assert b.exists()


def test_match_follows_our_key_server(tmp_path, vectors):
    from tracecode.keyserver.server import RunningServer
    from tracecode.keyserver.store import KeyServer, UploadKey

    ks = KeyServer.init(tmp_path / "ks")
    tek = bytes.fromhex(vectors["tek"])
    code, _ = ks.issue_code()
    ks.accept_upload(code, [UploadKey(tek, vectors["rolling_start_interval_number"])])
    ks.publish()
    v = vectors["intervals"][7]
    write_sightings_csv(tmp_path / "s.csv", [Sighting(v["enin"] * 600, bytes.fromhex(v["rpi"]), bytes.fromhex(v["aem"]), -50)])
    with RunningServer(ks) as srv:
        args = ("match", "--exports", srv.url, "--sightings", tmp_path / "s.csv", "--pubkey",
                ks.public_key_path(), "--cache", tmp_path / "cache", "--json")
        first = json.loads(run(*args).stdout)
        again = json.loads(run(*args).stdout)  # nothing new to download: the cached batch is used
    assert len(first["exposures"]) == 1 and first["batches"][0]["signature"] == "valid"
    assert again["exposures"] == first["exposures"]


def test_demo_host_only_runs(tmp_path):
    p = run("demo", "--host-only", "--workdir", tmp_path)
    assert "health codes: alice red, bob red, carol green" in p.stdout
