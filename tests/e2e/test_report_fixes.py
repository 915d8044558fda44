"""The scenario report's figure: the diagnosed person is on the timeline, the timeline is in
clock time (UTC), the legends sit outside the plots, and paths are the sampled positions (no
line drawn between waypoints, so none through a wall)."""
from __future__ import annotations

import calendar
import datetime as dt
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def figure():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tracecode.e2e import groundtruth
    from tracecode.e2e.evaluate import codes_for
    from tracecode.e2e.pipeline import exposures_synthetic
    from tracecode.e2e.report import build_figure
    from tracecode.e2e.scenario import load_scenario
    from tracecode.scoring import ScoringConfig

    scn = load_scenario(ROOT / "scenarios" / "two-badges.yaml")
    cfg = ScoringConfig()
    truth = groundtruth.compute(scn)
    exposures = exposures_synthetic(scn, seed=1)
    result = {"health_codes": codes_for(exposures, cfg), "precision": 1.0, "recall": 1.0}
    fig = build_figure(scn, truth, exposures, result, cfg)
    fig.canvas.draw()
    yield scn, fig
    plt.close(fig)


def test_diagnosed_person_is_on_the_timeline(figure):
    scn, fig = figure
    tl = fig.axes[1]
    labels = [t.get_text() for t in tl.get_yticklabels()]
    assert len(labels) == len(scn.ids)
    assert any(lbl.startswith("bob ") and "diagnosed" in lbl for lbl in labels), labels
    assert any(lbl.startswith("alice ") for lbl in labels)


def test_timeline_is_clock_time(figure):
    import matplotlib.dates as mdates

    scn, fig = figure
    tl = fig.axes[1]
    lo, hi = tl.get_xlim()
    start = mdates.num2date(lo)
    assert calendar.timegm(start.utctimetuple()) == scn.start == calendar.timegm(
        dt.datetime(2024, 3, 4, 8, 0, tzinfo=dt.timezone.utc).utctimetuple())
    assert abs((hi - lo) - scn.days) < 1e-6                  # date numbers are days
    assert isinstance(tl.xaxis.get_major_formatter(), mdates.ConciseDateFormatter)
    assert "UTC" in tl.get_xlabel() and "hours" not in tl.get_xlabel()
    ticks = [t.get_text() for t in tl.get_xticklabels() if t.get_text()]
    assert any(":" in t for t in ticks), ticks               # 09:00, 12:00 ...


def test_legends_outside_plots_and_grey_explained(figure):
    _, fig = figure
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes[:2]:
        leg = ax.get_legend()
        assert leg is not None
        lb, ab = leg.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert not lb.overlaps(ab), "the legend covers the plot"
    texts = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert any("scoring 0" in t for t in texts), texts


def test_no_path_lines_between_waypoints(figure):
    _, fig = figure
    plan = fig.axes[0]
    # walls and detected-contact segments have two points; a path line would have many
    assert all(len(line.get_xdata()) <= 2 for line in plan.get_lines())
    assert plan.collections, "sampled positions are drawn as points"
