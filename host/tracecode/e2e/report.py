"""Scenario report: a PNG (floor plan with paths and detected contacts + exposure timeline) and an
HTML page with the figures, the per-person table and the picture."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from ..scoring import BUCKETS, ScoringConfig
from .evaluate import PersonExposure
from .groundtruth import GroundTruth
from .scenario import Scenario

CODE_COLORS = {"green": "#2e9d48", "yellow": "#e3b505", "red": "#d1342f"}


def _home(scn: Scenario, pid: str) -> tuple[float, float] | None:
    """Where a person spends most time (median of their sampled positions)."""
    times = np.arange(scn.start, scn.end, 300, dtype=np.float64)
    pos = scn.positions(times)[:, scn.ids.index(pid), :]
    pos = pos[~np.isnan(pos[:, 0])]
    if not len(pos):
        return None
    return float(np.median(pos[:, 0])), float(np.median(pos[:, 1]))


def write_png(scn: Scenario, truth: GroundTruth, exposures: dict[str, PersonExposure], result: dict,
              path: Path, cfg: ScoringConfig) -> Path:
    import matplotlib.pyplot as plt

    fig = build_figure(scn, truth, exposures, result, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")   # keeps the legends below the plots
    plt.close(fig)
    return path


def build_figure(scn: Scenario, truth: GroundTruth, exposures: dict[str, PersonExposure], result: dict,
                 cfg: ScoringConfig):
    """The report's figure: axes[0] the floor plan, axes[1] the timeline (clock time, UTC)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    codes = result["health_codes"]
    fig, (ax, tl) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [1.05, 1.35]})
    # --- floor plan
    w, h = scn.area
    ax.add_patch(matplotlib.patches.Rectangle((0, 0), w, h, fill=False, lw=0.8, color="#999"))
    for wall in scn.walls:
        ax.plot([wall.a[0], wall.b[0]], [wall.a[1], wall.b[1]], color="#333",
                lw=1.0 + wall.attenuation_db / 6.0, solid_capstyle="butt")
    # Only the positions the scenario has (sampled every minute), as dots: a path between two
    # keyframes is the scenario's straight-line interpolation, not a route, so no line is drawn
    # through a wall; keyframes (waypoints) are marked.
    times = np.arange(scn.start, scn.end, 60, dtype=np.float64)
    pos = scn.positions(times)
    homes = {pid: _home(scn, pid) for pid in scn.ids}
    for j, pid in enumerate(scn.ids):
        col = CODE_COLORS.get(codes.get(pid, "green"), "#777")
        pts = pos[:, j, :]
        pts = pts[~np.isnan(pts[:, 0])]
        if len(pts):
            pts = np.unique(np.round(pts, 2), axis=0)
            ax.scatter(pts[:, 0], pts[:, 1], s=4, color=col, alpha=0.5, linewidths=0, zorder=1)
        kf = np.array([p for _, p in scn.person(pid).keyframes if p is not None], dtype=float).reshape(-1, 2)
        if len(kf):
            ax.scatter(kf[:, 0], kf[:, 1], s=9, marker="x", color=col, alpha=0.6, linewidths=0.8, zorder=2)
    for d in truth.diagnosed:
        hd = homes.get(d)
        for pid in scn.ids:
            hp = homes.get(pid)
            if pid == d or hp is None or hd is None or codes.get(pid) not in ("yellow", "red"):
                continue
            ax.plot([hd[0], hp[0]], [hd[1], hp[1]], ls="--", lw=1.0, color=CODE_COLORS[codes[pid]], alpha=0.8)
    for pid, hp in homes.items():
        if hp is None:
            continue
        col = CODE_COLORS.get(codes.get(pid, "green"), "#777")
        edge = "black" if pid in truth.diagnosed else ("#1f4fd1" if pid in truth.positives else "white")
        ax.scatter([hp[0]], [hp[1]], s=70, color=col, edgecolors=edge, linewidths=2.0, zorder=3)
        ax.annotate(pid, hp, textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlim(-0.5, w + 0.5)
    ax.set_ylim(-0.5, h + 0.5)
    ax.set_aspect("equal")
    ax.set_xlabel("m")
    ax.set_title(f"{scn.name}: where people were, health codes, detected contacts (dashed)", fontsize=9)
    # the legend goes below the plan, never over a person
    ax.legend(handles=[
        Line2D([], [], marker="o", ls="", color=CODE_COLORS["red"], markeredgecolor="black", mew=2,
               label="diagnosed (usual place)"),
        Line2D([], [], marker="o", ls="", color="#ccc", markeredgecolor="#1f4fd1", mew=2,
               label="close contact (truth)"),
        Line2D([], [], marker=".", ls="", color="#777", label="position, every minute"),
        Line2D([], [], marker="x", ls="", color="#777", label="path keyframe"),
        Line2D([], [], ls="--", color=CODE_COLORS["yellow"], label="detected contact"),
        Line2D([], [], marker="s", ls="", color=CODE_COLORS["green"], label="green"),
        Line2D([], [], marker="s", ls="", color=CODE_COLORS["yellow"], label="yellow"),
        Line2D([], [], marker="s", ls="", color=CODE_COLORS["red"], label="red"),
    ], fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, frameon=False)
    # --- timeline, in clock time (UTC); every person, the diagnosed too
    import datetime as _dt

    import matplotlib.dates as mdates
    from matplotlib.patches import Patch

    ids = list(scn.ids)
    epoch = mdates.date2num(_dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc))
    clock = lambda t: np.asarray(t, dtype=float) / 86400.0 + epoch  # noqa: E731  (matplotlib date numbers)
    minute = 60.0 / 86400.0
    vmax = max((float(e.window_scores(cfg).max()) for e in exposures.values() if len(e.starts)), default=1.0) or 1.0
    cmap = plt.get_cmap("OrRd")
    for y, pid in enumerate(ids):
        for c in truth.contacts:
            if c.person == pid:
                for a, b in c.intervals:
                    tl.barh(y + 0.22, clock(b) - clock(a), left=clock(a), height=0.25, color="#1f4fd1", alpha=0.6)
        e = exposures.get(pid)
        if e is not None and len(e.starts):
            sc = e.window_scores(cfg)
            for a, b, s in zip(e.starts, e.ends, sc):
                tl.barh(y - 0.12, max(clock(b + 120) - clock(a), 2 * minute), left=clock(a), height=0.4,
                        color=cmap(0.25 + 0.75 * min(1.0, s / vmax)) if s > 0 else "#ccc")
    for d in scn.diagnosed:
        tl.axvline(clock(d.at), color="black", lw=1, ls=":")
        if d.person in ids:
            tl.plot([clock(d.at)], [ids.index(d.person)], marker="D", color="black", ms=5, zorder=4)
    for k in range(1, scn.days):
        tl.axvline(clock(scn.start + k * 86400), color="#bbb", lw=0.6)
    tl.set_yticks(range(len(ids)))
    tl.set_yticklabels([f"{p} ({codes.get(p, '?')[0].upper()})" + (" diagnosed" if p in truth.diagnosed else "")
                        for p in ids], fontsize=7)
    tl.set_ylim(len(ids) - 0.4, -0.6)
    tl.set_xlim(clock(scn.start), clock(scn.end))
    tl.xaxis_date(tz=_dt.timezone.utc)
    loc = mdates.AutoDateLocator(tz=_dt.timezone.utc)
    tl.xaxis.set_major_locator(loc)
    tl.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc, tz=_dt.timezone.utc))
    tl.set_xlabel("time (UTC)")
    tl.set_title("exposure windows vs ground-truth close time", fontsize=9)
    tl.legend(handles=[
        Patch(color=cmap(0.9), label="matched window (darker = higher score)"),
        Patch(color="#ccc", label="matched window scoring 0 (attenuation above the last threshold, or "
                                  "outside the infectious period)"),
        Patch(color="#1f4fd1", alpha=0.6, label="ground truth: within the contact distance"),
        Line2D([], [], color="black", ls=":", marker="D", ms=4, label="diagnosis"),
    ], fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.suptitle(f"{scn.name}: precision {result['precision']:.2f}, recall {result['recall']:.2f} "
                 f"(yellow or red vs: {truth.rule})", fontsize=9)
    fig.tight_layout()
    return fig


def write_html(scn: Scenario, result: dict, png_name: str, path: Path) -> Path:
    e = html.escape
    rows = []
    for p in result["per_person"]:
        code = p["health_code"]
        verdict = ""
        if not p["diagnosed"]:
            flagged = code in ("yellow", "red")
            verdict = ("TP" if p["close_contact"] else "FP") if flagged else ("FN" if p["close_contact"] else "TN")
        mins = "".join(f"<td>{p['exposure_minutes'][b]:g}</td>" for b in BUCKETS)
        rows.append(
            f"<tr><td>{e(p['id'])}</td><td>{e(p['role'])}</td>"
            f"<td style='background:{CODE_COLORS.get(code, '#fff')};color:#fff'>{e(code)}</td>"
            f"<td>{'diagnosed' if p['diagnosed'] else ('yes' if p['close_contact'] else 'no')}</td>"
            f"<td>{p['ground_truth_minutes']:g}</td>{mins}<td>{p['max_daily_score']:g}</td><td>{verdict}</td></tr>")
    m = result["metrics"]
    cfg = result["scoring"]
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>TraceCode scenario report: {e(scn.name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 7px;text-align:left}}
th{{background:#f2f2f2}}.fig{{max-width:100%;border:1px solid #ddd}}</style></head><body>
<h1>Scenario {e(scn.name)}</h1>
<p>{e(scn.description)}</p>
<p><b>Ground truth rule:</b> {e(result['rule'])}.<br>
<b>Diagnosed:</b> {e(', '.join(d['person'] + ' at ' + d['at'] for d in result['diagnosed']))}.<br>
<b>Mode:</b> {e(result['mode'])}; {result['people']} people, {result['days']} day(s); wall time {result.get('wall_s', 0):g} s.</p>
<h2>Precision {result['precision']:.3f} &middot; recall {result['recall']:.3f}</h2>
<p>"Yellow or red" against the close contacts: TP {m['tp']}, FP {m['fp']} ({e(', '.join(m['false_positives']) or '-')}),
FN {m['fn']} ({e(', '.join(m['false_negatives']) or '-')}), TN {m['tn']}.<br>
Scoring: thresholds {cfg['thresholds_db']} dB, bucket weights {cfg['bucket_weights']},
yellow &ge; {cfg['yellow_threshold']:g}, red &ge; {cfg['red_threshold']:g} (daily sum of window scores, 900 = 15 weighted minutes).</p>
<img class="fig" src="{e(png_name)}" alt="floor plan with paths and detected contacts, and the exposure timeline">
<h2>Per person</h2>
<table><tr><th>person</th><th>role</th><th>health code</th><th>close contact (truth)</th><th>truth: max daily minutes</th>
{''.join(f'<th>{b} min</th>' for b in BUCKETS)}<th>max daily score</th><th></th></tr>
{''.join(rows)}</table>
<h2>Figures (JSON)</h2><pre>{e(json.dumps({k: result[k] for k in ('scenario', 'precision', 'recall', 'metrics', 'scoring', 'wall_s') if k in result}, indent=1))}</pre>
</body></html>
"""
    path.write_text(doc, encoding="utf-8")
    return path


def write_report(scn: Scenario, truth: GroundTruth, exposures: dict[str, PersonExposure], result: dict,
                 workdir: Path, cfg: ScoringConfig) -> dict[str, Path]:
    png = write_png(scn, truth, exposures, result, Path(workdir) / f"{scn.name}.png", cfg)
    page = write_html(scn, result, png.name, Path(workdir) / f"{scn.name}.html")
    return {"png": png, "html": page}

