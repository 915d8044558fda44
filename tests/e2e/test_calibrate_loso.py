"""Leave-one-scenario-out calibration of TraceCode's rule (tracecode.e2e.calibrate): each held-out
scenario is scored with the setting chosen on the other scenarios only, never on itself."""

from __future__ import annotations

import pytest

from tracecode.e2e.calibrate import Case, calibrate_tracecode
from tracecode.e2e.groundtruth import GroundTruth
from tracecode.scoring import ScoringConfig


class _Person:
    """A person's per-key estimates as the scorer sees them: (seconds heard, proximity dB)."""

    def __init__(self, proximity_db: float, minutes: float = 20.0, diagnosed: bool = False):
        self.diagnosed = diagnosed
        self._est = [(60.0 * minutes, float(proximity_db))]

    def estimates(self, cfg):
        return list(self._est)


def _case(name: str, positives: dict[str, float], negatives: dict[str, float]) -> Case:
    people = {"sick": _Person(40, diagnosed=True)}
    people.update({p: _Person(db) for p, db in {**positives, **negatives}.items()})
    truth = GroundTruth(scenario=name, rule="2 m for 15 min", positives=set(positives),
                        negatives=set(negatives), diagnosed={"sick"})
    return Case(name, people, truth)


# Two settings: a proximity threshold of 55 dB (tight) and 65 dB (loose).
CONFIGS = [ScoringConfig.tracecode(gate_db=70, proximity_quantile=0.5, proximity_db=p, min_minutes=15.0)
           for p in (55.0, 65.0)]

# A and B want the loose threshold (their contacts sit at 60 dB); C alone, and all three
# pooled, want the tight one (its contacts at 50 dB, its non-contacts at 60 dB).
CASES = [
    _case("a", {"a1": 60}, {"a2": 62}),
    _case("b", {"b1": 60}, {"b2": 70}),
    _case("c", {"c1": 50, "c6": 50, "c7": 50}, {"c2": 60, "c3": 60, "c4": 60, "c5": 60}),
]


def test_each_fold_is_chosen_without_the_held_out_scenario():
    r = calibrate_tracecode(CASES, CONFIGS)
    folds = {f["held_out"]: f for f in r["cross_validation"]}
    assert r["settings_tried"] == 2
    # C is scored with what A and B chose (65 dB), though 55 dB is best on C and on all three
    assert folds["c"]["chosen"]["proximity_db"] == 65.0
    assert (folds["c"]["tp"], folds["c"]["fp"], folds["c"]["fn"]) == (3, 4, 0)
    assert r["best"]["proximity_db"] == 55.0
    # A's fold is chosen on B and C, where 55 dB (F1 0.86) beats 65 dB (0.67): A then misses
    # its 60 dB contact
    assert folds["a"]["chosen"]["proximity_db"] == 55.0
    assert (folds["a"]["tp"], folds["a"]["fn"]) == (0, 1)
    # B's fold is chosen on A and C, like A's
    assert folds["b"]["chosen"]["proximity_db"] == 55.0
    # the headline is the pooled held-out counts, not the in-sample ones
    cv = r["cross_validated"]
    assert (cv["tp"], cv["fp"], cv["fn"]) == (3, 4, 2)
    assert cv["f1"] == pytest.approx(2 * 3 / (2 * 3 + 4 + 2))
    assert r["best_in_sample"]["c"]["f1"] == pytest.approx(1.0)


def test_a_diagnosed_person_is_red_and_not_counted():
    r = calibrate_tracecode(CASES[:2], CONFIGS)
    for f in r["cross_validation"]:
        assert f["tp"] + f["fp"] + f["fn"] + f["tn"] == 2   # the two people, not the diagnosed one
