"""Early stop: an eval's `stop_when` rule, decided on the records in the store (docs/progress-cost.md "Early answers").

The rule is looked at every time the driver reads new records, and the eval stops the first time it
holds, so it is decided on a confidence *sequence* (estimators.py), whose error rate holds under
that continuous monitoring. A stopped eval is ESTIMATED: its `estimate-<rule>.json` (create-only)
holds % done and the interval; removing the rule and re-running resumes it to the full number.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from pipeline.progress.estimators import Batches, Estimate, bpb_estimate, paired_estimate
from pipeline.spec import EvalRecipe, StopRule
from pipeline.store import Layout

ESTIMATE_VERSION = 1


def rule_digest(rule: StopRule) -> str:
    return hashlib.sha256(json.dumps(rule.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


def estimate_key(layout: Layout, seed: int, recipe: EvalRecipe) -> str | None:
    """The ESTIMATED commit object of an eval under its current rule (None without a rule): a
    changed rule is another object, so a tighter rule resumes the eval."""
    return None if recipe.stop_when is None else layout.estimate(seed, recipe.name, rule_digest(recipe.stop_when))


@dataclass(frozen=True)
class StopDecision:
    stop: bool
    why: str  # one line: what the rule saw
    estimate: Estimate  # this recipe's bpb (sequence interval)
    vs: Estimate | None = None  # worse_than: this − the other recipe, paired

    def record(self, seed: int, recipe: str, rule: StopRule) -> dict[str, Any]:
        """The estimate object's body."""
        return {
            "version": ESTIMATE_VERSION, "seed": seed, "recipe": recipe, "rule": rule.model_dump(mode="json"),
            "why": self.why, "val_bpb": self.estimate.as_dict(), "done": self.estimate.done,
            "difference": self.vs.as_dict() if self.vs else None,
        }


def decide(rule: StopRule, own: Batches, batches: int, pair: tuple[Batches, Batches] | None = None) -> StopDecision:
    """`own`: the batches this recipe has done; `pair`: (this recipe, `rule.worse_than`) on the
    batches both have done, in the same order (the spec checks they share their geometry)."""
    est = bpb_estimate(own, batches, kind="sequence", alpha=rule.alpha)
    if len(own) < rule.min_batches or est.half_width is None:
        return StopDecision(False, f"{len(own)} of {batches} batches, deciding from {rule.min_batches}", est)
    if rule.half_width is not None:
        hw = est.half_width
        stop = hw <= rule.half_width
        return StopDecision(stop, f"bpb {est.value:.5f} ± {hw:.5f} ({'≤' if stop else '>'} {rule.half_width:g}) at {est.done:.1%}", est)
    shared = len(pair[0]) if pair else 0
    if shared < rule.min_batches:
        return StopDecision(False, f"{shared} batches shared with {rule.worse_than}, deciding from {rule.min_batches}", est)
    diff = paired_estimate(pair[0], pair[1], batches, kind="sequence", alpha=rule.alpha)
    stop = diff.low is not None and diff.low > 0
    return StopDecision(
        stop,
        f"bpb − {rule.worse_than}: {diff.value:+.5f} ± {diff.half_width:.5f} over {shared} shared batches"
        + (": worse" if stop else ": not yet shown worse"),
        est, diff,
    )


def paired_batches(own: dict, other: dict) -> tuple[Batches, Batches]:
    """Both recipes' records of the batches both have done, in batch order."""
    both = sorted(set(own) & set(other))
    return Batches.of(own[b] for b in both), Batches.of(other[b] for b in both)


class EarlyStops:
    """The driver's early-stop policy: which of the evals it runs have met their rule, read from
    the store at most every `every_s` (records arrive once per checkpoint interval anyway). An eval
    that stops gets its estimate object, written create-only before the driver ends its units."""

    def __init__(self, spec, store, every_s: float, now=None):
        self.spec, self.store, self.layout = spec, store, Layout(spec.name)
        self.every_s, self.now = every_s, now or time.monotonic
        self.last = -1e18

    def due(self) -> bool:
        return self.now() - self.last >= self.every_s

    def check(self, evals: set[tuple[int, str]]) -> list[tuple[int, str, StopDecision]]:
        """Of `evals` (seed, recipe) still running or pending, those whose rule holds now."""
        from workers.segments import load_progress  # json only

        self.last = self.now()
        out = []
        for seed, name in sorted(evals):
            recipe = self.spec.eval_recipe(name)
            rule = recipe.stop_when
            if rule is None or not self.store.exists(self.layout.plan(seed, name)):
                continue
            batches = self.store.get_json(self.layout.plan(seed, name))["batches"]
            own = load_progress(self.store, self.layout.eval_dir(seed, name)).records
            pair = None
            if rule.worse_than:
                pair = paired_batches(own, load_progress(self.store, self.layout.eval_dir(seed, rule.worse_than)).records)
            decision = decide(rule, Batches.of(own[b] for b in sorted(own)), batches, pair)
            if decision.stop:
                self.store.put_new_json(estimate_key(self.layout, seed, recipe), decision.record(seed, name, rule))
                out.append((seed, name, decision))
        return out
