"""`tracecode report`: what an operator acts on, from the station database alone.

For every badge: its health code with the exposure days and minutes behind it (from the
newest `match --db` result that set it), whether the code reached the badge (delivered at
which sync, or pending since when), and whether the badge needs attention: overdue for sync,
low battery, little free flash, firmware not running. As JSON (`--json`) or as one
self-contained HTML page with plots on clock time (UTC): encounters per hour per badge with
the exposure windows marked, and hours since each badge's last sync.

Key material never appears: exposure windows are shown by time and duration only.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

from .db import Database

ACTION_ORDER = {"red": 0, "yellow": 1, "green": 2, None: 3}


def _iso(t) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(int(t))) + "Z"


def _exposures(db: Database, badge_id: str, code: str | None) -> list[dict]:
    """Exposure windows of the newest match result with the badge's current code."""
    row = db.conn.execute(
        "SELECT detail, matched_at FROM matches WHERE badge_id=? AND health_code=? "
        "ORDER BY id DESC LIMIT 1", (badge_id, code)).fetchone() if code else None
    if row is None:
        return []
    try:
        windows = json.loads(row["detail"])
    except ValueError:
        return []
    out = []
    for w in windows if isinstance(windows, list) else []:
        if not isinstance(w, dict):
            continue
        start = w.get("window_start")
        dur = w.get("duration_s")
        if not isinstance(start, (int, float)) or not isinstance(dur, (int, float)):
            continue
        out.append({"start": int(start), "start_utc": _iso(start),
                    "day": time.strftime("%Y-%m-%d", time.gmtime(int(start))),
                    "minutes": round(dur / 60, 1),
                    "min_attenuation_db": w.get("min_attenuation_db"),
                    "score": w.get("score")})
    return sorted(out, key=lambda e: e["start"])


def build(db: Database, *, now: float | None = None, overdue_hours: float = 36.0,
          low_battery_pct: int = 20, low_flash_pct: int = 10) -> dict:
    now = time.time() if now is None else now
    badges = []
    for b in db.badges():
        bid = b["badge_id"]
        health = db.current_health(bid)
        code = health["code"] if health else None
        exposures = _exposures(db, bid, code)
        days: dict[str, float] = {}
        for e in exposures:
            days[e["day"]] = round(days.get(e["day"], 0) + e["minutes"], 1)
        attention = []
        last = b["last_sync"]
        if last is None:
            attention.append("never synced")
        elif now - last > overdue_hours * 3600:
            attention.append(f"sync overdue: last {round((now - last) / 3600)} h ago")
        if b["battery_pct"] is not None and b["battery_pct"] < low_battery_pct:
            attention.append(f"battery low: {b['battery_pct']}%")
        if b["flash_free"] is not None and b["flash_total"]:
            pct = 100 * b["flash_free"] / b["flash_total"]
            if pct < low_flash_pct:
                attention.append(f"flash nearly full: {pct:.0f}% free")
        if b["running"] == 0:
            attention.append("firmware was not running at the last contact")
        delivered = None if health is None else health["delivered_at"]
        if health is not None and delivered is None:
            attention.append(f"health code {code} not yet on the badge (queued "
                             f"{_iso(health['created_at'])}; deliver with `tracecode sync`)")
        badges.append({
            "badge_id": bid, "board": b["board"],
            "health": code, "reason": health["reason"] if health else None,
            "health_set_at": _iso(health["created_at"]) if health else None,
            "delivered": None if health is None else delivered is not None,
            "delivered_at": _iso(delivered),
            "health_shown_on_badge": b["health_shown"],
            "exposure_days": [{"day": d, "minutes": m} for d, m in sorted(days.items())],
            "exposure_minutes": round(sum(days.values()), 1),
            "exposures": exposures,
            "first_exposure_utc": exposures[0]["start_utc"] if exposures else None,
            "diagnosed_at": _iso(b["diagnosed_at"]),
            "last_sync": _iso(last), "hours_since_sync": None if last is None else round(
                (now - last) / 3600, 1),
            "battery_pct": b["battery_pct"], "flash_free": b["flash_free"],
            "flash_total": b["flash_total"], "fw": b["fw_version"],
            "encounters": db.encounter_count(bid),
            "attention": attention,
        })
    badges.sort(key=lambda r: (ACTION_ORDER.get(r["health"], 3), r["badge_id"]))
    notify = [r for r in badges if r["health"] in ("red", "yellow") and not r["diagnosed_at"]]
    return {
        "generated_at": _iso(now), "database": str(db.path),
        "thresholds": {"overdue_hours": overdue_hours, "low_battery_pct": low_battery_pct,
                       "low_flash_pct": low_flash_pct},
        "summary": {
            "badges": len(badges),
            "red": sum(r["health"] == "red" for r in badges),
            "yellow": sum(r["health"] == "yellow" for r in badges),
            "undelivered": sum(r["delivered"] is False for r in badges),
            "needs_attention": sum(bool(r["attention"]) for r in badges),
        },
        "notify": [{"badge_id": r["badge_id"], "health": r["health"],
                    "since": r["first_exposure_utc"], "exposure_days": r["exposure_days"],
                    "delivered": r["delivered"]} for r in notify],
        "badges": badges,
    }


# ------------------------------------------------------------------------------ HTML
def _plots(db: Database, doc: dict) -> list[tuple[str, str]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from datetime import datetime, timezone

    out = []
    rows = doc["badges"]
    if not rows:
        return out
    fig, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * len(rows)))
    for i, r in enumerate(rows):
        hours = [t // 3600 * 3600 for (t,) in db.conn.execute(
            "SELECT first_seen FROM encounters WHERE badge_id=?", (r["badge_id"],))]
        counts: dict[int, int] = {}
        for h in hours:
            counts[h] = counts.get(h, 0) + 1
        if counts:
            peak = max(counts.values())
            for h, n in counts.items():
                ax.barh(i, 1 / 24, left=mdates.date2num(datetime.fromtimestamp(h, timezone.utc)),
                        height=0.8 * n / peak, color="#7a8fa6", align="center")
        for e in r["exposures"]:
            ax.barh(i, e["minutes"] / 1440, left=mdates.date2num(
                datetime.fromtimestamp(e["start"], timezone.utc)), height=0.9,
                color="#d62728" if r["health"] == "red" else "#ff9f1c", alpha=0.8,
                align="center")
    ax.set_yticks(range(len(rows)), [f"{r['badge_id']} ({r['health'] or '-'})" for r in rows])
    ax.invert_yaxis()
    ax.xaxis_date()
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    ax.set_xlabel("clock time (UTC)")
    ax.set_title("encounters logged per hour (grey, height = share of that badge's busiest "
                 "hour); exposure windows behind a code (red / orange)", fontsize=9)
    fig.autofmt_xdate()
    out.append(("Encounters and exposures over time", _png(fig)))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 0.5 + 0.35 * len(rows)))
    hrs = [r["hours_since_sync"] if r["hours_since_sync"] is not None else 0 for r in rows]
    ax.barh(range(len(rows)), hrs, color=["#d62728" if any("overdue" in a or "never" in a
                                                           for a in r["attention"])
                                          else "#2ca02c" for r in rows])
    ax.axvline(doc["thresholds"]["overdue_hours"], color="k", ls="--", lw=1)
    ax.set_yticks(range(len(rows)), [r["badge_id"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"hours since last sync (dashed: overdue after "
                  f"{doc['thresholds']['overdue_hours']:g} h; red: overdue or never synced)")
    out.append(("Sync age", _png(fig)))
    plt.close(fig)
    return out


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def render_html(db: Database, doc: dict) -> str:
    e = html.escape
    colour = {"red": "#d62728", "yellow": "#e0a800", "green": "#2ca02c"}
    s = doc["summary"]
    parts = [f"""<!doctype html><html><head><meta charset="utf-8">
<title>TraceCode station report</title><style>
body{{font-family:sans-serif;margin:2em;max-width:70em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}}
.code{{font-weight:bold;color:white;padding:1px 6px;border-radius:3px}} .warn{{color:#b00}}
</style></head><body><h1>TraceCode station report</h1>
<p>{e(doc['database'])}, generated {e(doc['generated_at'])}: {s['badges']} badge(s),
{s['red']} red, {s['yellow']} yellow, {s['undelivered']} code(s) not yet on their badge,
{s['needs_attention']} badge(s) needing attention.</p>
<h2>Who to notify</h2>"""]
    if doc["notify"]:
        parts.append("<table><tr><th>badge</th><th>code</th><th>exposed since</th>"
                     "<th>exposure days (minutes)</th><th>code on the badge</th></tr>")
        for n in doc["notify"]:
            days = ", ".join(f"{d['day']} ({d['minutes']:g} min)" for d in n["exposure_days"])
            parts.append(f"<tr><td>{e(n['badge_id'])}</td><td><span class=code style="
                         f"'background:{colour.get(n['health'], '#888')}'>{e(n['health'])}</span>"
                         f"</td><td>{e(n['since'] or '-')}</td><td>{e(days or '-')}</td><td>"
                         f"{'yes' if n['delivered'] else '<span class=warn>not yet</span>'}"
                         "</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>Nobody: no badge has a red or yellow code.</p>")
    parts.append("<h2>Badges</h2><table><tr><th>badge</th><th>code</th><th>reason</th>"
                 "<th>delivered</th><th>last sync</th><th>battery</th><th>encounters</th>"
                 "<th>attention</th></tr>")
    for r in doc["badges"]:
        code = r["health"] or "-"
        parts.append(
            f"<tr><td>{e(r['badge_id'])}<br><small>{e(r['board'])}, fw {e(r['fw'] or '-')}"
            f"</small></td><td><span class=code style='background:"
            f"{colour.get(r['health'], '#888')}'>{e(code)}</span></td>"
            f"<td>{e(r['reason'] or '-')}</td>"
            f"<td>{e(r['delivered_at'] or ('pending' if r['delivered'] is False else '-'))}</td>"
            f"<td>{e(r['last_sync'] or 'never')}</td>"
            f"<td>{'-' if r['battery_pct'] is None else str(r['battery_pct']) + '%'}</td>"
            f"<td>{r['encounters']}</td><td class=warn>{'<br>'.join(map(e, r['attention']))}"
            "</td></tr>")
    parts.append("</table>")
    for title, png in _plots(db, doc):
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,{png}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
