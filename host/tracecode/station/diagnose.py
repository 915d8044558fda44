"""`tracecode diagnose`: with the wearer's button-press consent, export the badge's TEKs.

The badge releases its keys only after authentication AND a press of its own button within
the time limit; without it nothing leaves the badge and nothing is stored here. With consent
the keys of the last 14 days become a signed export batch (`tracecode.export.write_batch`)
or an upload to a key server (POST /v1/upload), are stored in the database as this
diagnosed wearer's keys, and the badge's health code becomes red.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from ..errors import DeviceError, InputError, NetworkError, TraceCodeError
from .db import Database
from .link import BadgeLink, BadgeRefused
from .sync import authenticate, connect

REPORT_TYPES = {"unknown": 0, "confirmed-test": 1, "confirmed-clinical-diagnosis": 2,
                "self-report": 3, "recursive": 4, "revoked": 5}
ROLLING_PERIOD = 144
KEEP_DAYS = 14


def _keys_from_badge(raw: list[dict], report_type: int, onset_days: int | None, now: float):
    from ..export import DiagnosisKey

    today = int(now) // 600 // ROLLING_PERIOD * ROLLING_PERIOD
    oldest = today - KEEP_DAYS * ROLLING_PERIOD
    keys = []
    for k in raw:
        try:
            data = bytes.fromhex(k["key_data"])
            rsin = int(k["rolling_start_interval_number"])
            period = int(k.get("rolling_period", ROLLING_PERIOD))
        except (KeyError, ValueError, TypeError):
            raise DeviceError("badge sent a malformed key record") from None
        if len(data) != 16 or not 1 <= period <= ROLLING_PERIOD:
            raise DeviceError("badge sent a malformed key record")
        if rsin < oldest or rsin > today:
            continue   # older than 14 days, or from the future
        dso = None
        if onset_days is not None:
            # days since onset, as of the key's day
            dso = (rsin - today) // ROLLING_PERIOD + onset_days
        keys.append(DiagnosisKey(data, rsin, period, report_type=report_type,
                                 days_since_onset_of_symptoms=dso))
    return sorted(keys, key=lambda k: k.rolling_start_interval_number)


def upload(url: str, code: str, keys, timeout_s: float = 15.0) -> dict:
    """POST the keys to a TraceCode key server; a refusal becomes one clear line."""
    endpoint = url.rstrip("/")
    if not endpoint.endswith("/v1/upload"):
        endpoint += "/v1/upload"
    doc = {"code": code, "keys": [
        {"key_data": k.key_data.hex(),
         "rolling_start_interval_number": k.rolling_start_interval_number,
         "rolling_period": k.rolling_period, "report_type": k.report_type,
         "days_since_onset_of_symptoms": k.days_since_onset_of_symptoms} for k in keys]}
    req = urllib.request.Request(endpoint, data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
            why = body.get("message") or body.get("error") or exc.reason
        except ValueError:
            why = exc.reason
        raise NetworkError(f"key server refused the upload: {why} (HTTP {exc.code})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NetworkError(f"key server {url} unreachable ({reason})") from None


def diagnose(db: Database, port: str, badge_id: str, *, report_type: int = 1,
             onset_days: int | None = None, out_dir: Path | None = None,
             signing_key: Path | None = None, keyserver: str | None = None,
             code: str | None = None, wait_s: float = 60.0,
             prompt: Callable[[str], None] = print, now: Callable[[], float] = time.time,
             link_factory=None) -> dict:
    if (out_dir is None) == (keyserver is None):
        raise InputError("give either --out DIR or --keyserver URL --code CODE")
    if keyserver is not None and not code:
        raise InputError("--keyserver needs the wearer's verification --code")
    if out_dir is not None:
        from ..export import load_private_key
        if signing_key is None:
            raise InputError("--out needs --signing-key PEM (the health authority's key)")
        key = load_private_key(signing_key)   # checked before anything leaves the badge
    if db.badge(badge_id) is None:
        raise InputError(f"unknown badge {badge_id!r}")

    link = connect(port, link_factory=link_factory)
    try:
        if link.badge_id != badge_id:
            raise DeviceError(f"{port}: that is badge {link.badge_id!r}, not {badge_id!r}")
        authenticate(db, link)
        prompt(f"Ask the wearer to press the button on badge {badge_id} now "
               f"(within {wait_s:.0f} s) to consent to sharing their keys.")
        try:
            raw = link.export_keys(int(wait_s * 1000))
        except BadgeRefused as exc:
            if exc.code == "no-consent":
                raise TraceCodeError(f"no consent on badge {badge_id}: the button was not "
                                     f"pressed within {wait_s:.0f} s; nothing left the badge",
                                     exit_code=5) from None
            raise
        keys = _keys_from_badge(raw, report_type, onset_days, now())
        if not keys:
            raise DeviceError(f"badge {badge_id} holds no keys of the last 14 days")
        t = int(now())
        if out_dir is not None:
            from ..export import write_batch
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            start = keys[0].rolling_start_interval_number * 600
            path = out_dir / f"diagnosis-{badge_id}-{t}.zip"
            write_batch(path, keys, signing_key=key, start_timestamp=start, end_timestamp=t)
            destination = str(path)
            result = {"file": str(path)}
        else:
            result = upload(keyserver, code, keys)
            destination = keyserver
        db.store_diagnosed_keys(badge_id, keys, destination)
        db.set_health_code(badge_id, "red", "diagnosed")
        pending = db.pending_health(badge_id)
        try:
            link.set_health("red")
            if pending is not None:
                db.mark_health_delivered(pending["id"], None)
        except DeviceError:
            pass   # delivered at the next sync
        return {"badge_id": badge_id, "keys": len(keys), "report_type": report_type,
                "days_since_onset": onset_days, "destination": destination, **result}
    finally:
        link.close()
