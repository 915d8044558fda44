"""`tracecode report`: health codes with the exposure days and minutes behind them (from a
real match), delivery status, overdue and low-battery badges; HTML with clock-time plots."""

from __future__ import annotations

import json
import os
import random
import time

from tracecode import en, export
from tracecode.cli import main
from tracecode.matcher import Sighting, evaluate
from tracecode.station import logfmt
from tracecode.station.db import Database


def _match(rng, day0):
    tek = rng.randbytes(16)
    meta = en.encode_metadata(-4, 1)
    heard = []
    for m in range(40):                       # 40 minutes side by side at 09:00 UTC
        t = day0 + 9 * 3600 + 60 * m
        r = en.rpi(en.rpik(tek), en.enin(t))
        heard.append(Sighting(t, r, en.aem(en.aemk(tek), r, meta), -55))
    keys = [export.DiagnosisKey(tek, en.enin(day0), 144, 1, 0, 1)]
    return evaluate(keys, heard, jobs=1)


def test_report_json_and_html(tmp_path, capsys):
    rng = random.Random(4)
    now = time.time()
    day0 = (int(now) // 86400 - 2) * 86400
    p = tmp_path / "st.sqlite"
    with Database(p) as db:
        for bid in ("b-alice", "b-bob", "b-carol"):
            db.add_badge(bid, "esp32-devkitc", os.urandom(32))
        res = _match(rng, day0)
        assert res.health_code == "red"
        hid = db.record_match("b-bob", res)
        db.set_health_code("b-carol", "green", "match: 0 exposure window(s)")
        db.mark_health_delivered(db.pending_health("b-carol")["id"], None)
        db.update_badge_status("b-carol", {"battery_pct": 12, "running": True}, synced=True)
        db.update_badge_status("b-bob", {"battery_pct": 80}, synced=True)
        db.conn.execute("UPDATE badges SET last_sync=? WHERE badge_id='b-bob'", (int(now) - 50 * 3600,))
        recs = [logfmt.decode_record(logfmt.encode_record(rng.randbytes(16), b"abcd", 9 * 3600 + 60 * i,
                                                          60, 3, -70, -50, -60), day0 // 86400, 16 + 32 * i)
                for i in range(30)]
        db.commit_pull("b-bob", db.start_session("b-bob", "p"), {day0 // 86400: (16 + 32 * 30, recs)})
    assert main(["report", "--db", str(p), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    bob = next(b for b in doc["badges"] if b["badge_id"] == "b-bob")
    want_min = sum(w.to_json()["duration_s"] for w in res.windows) / 60
    assert bob["health"] == "red" and bob["delivered"] is False and bob["delivered_at"] is None
    assert bob["exposure_minutes"] == round(want_min, 1) and want_min >= 30
    assert bob["exposure_days"] == [{"day": time.strftime("%Y-%m-%d", time.gmtime(day0)),
                                     "minutes": round(want_min, 1)}]
    assert bob["first_exposure_utc"].startswith(time.strftime("%Y-%m-%d 09:", time.gmtime(day0)))
    assert any("sync overdue" in a for a in bob["attention"])
    assert any("not yet on the badge" in a for a in bob["attention"])
    carol = next(b for b in doc["badges"] if b["badge_id"] == "b-carol")
    assert carol["delivered"] is True and "battery low: 12%" in carol["attention"]
    alice = next(b for b in doc["badges"] if b["badge_id"] == "b-alice")
    assert alice["health"] is None and "never synced" in alice["attention"]
    assert doc["notify"] == [{"badge_id": "b-bob", "health": "red", "since": bob["first_exposure_utc"],
                              "exposure_days": bob["exposure_days"], "delivered": False}]
    assert doc["badges"][0]["badge_id"] == "b-bob"        # red first
    text = json.dumps(doc)
    assert res.windows[0].key_data.hex() not in text       # no key material

    out = tmp_path / "r.html"
    assert main(["report", "--db", str(p), "--out", str(out)]) == 0
    page = out.read_text()
    assert "Who to notify" in page and "b-bob" in page and "not yet" in page
    assert page.count("data:image/png;base64,") == 2
    assert "alt='Encounters and exposures over time'" in page and "alt='Sync age'" in page
    assert res.windows[0].key_data.hex() not in page


def test_report_refuses_missing_database(tmp_path, capsys):
    assert main(["report", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert not (tmp_path / "none.sqlite").exists()
