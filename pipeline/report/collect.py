"""A campaign's report, read from its store alone: what report.md, report.json, the pictures and
submission.json are made of (docs/reports.md "Reports").

Per seed and recipe: the final numbers of result.json, or, for an eval that is not finished (or
that its stop rule ended), the running value with its interval and % done, never as a bare number:
a sharded eval's interval is the status's (pipeline/progress/estimators.py), an ESTIMATED one's the
stop rule's confidence sequence, a TTT prefix has none. Means and stds are over finished seeds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.records.ledger import Ledger
from pipeline.progress.cost import CostReport
from pipeline.progress.stopping import estimate_key
from pipeline.progress.view import EvalStatus, campaign_status
from pipeline.report.baseline import Baseline
from pipeline.report.provenance import AttemptProvenance, Stacks, collect_provenance, compare_stacks, spanned_groups
from pipeline.report.stats import Spread, TTest, spread, test_less
from pipeline.report.timeline import Timeline, timeline
from pipeline.report.trajectory import Trajectory, trajectory, windows_per_batch
from pipeline.spec import CampaignSpec
from pipeline.store import Layout, Store

REPORT_VERSION = 1


@dataclass
class SeedRow:
    seed: int
    recipe: str
    state: str  # DONE, ESTIMATED, RUNNING, PENDING, FAILED, WAITING, UNPLANNED (pipeline/progress/view.py)
    val_bpb: float | None  # the finished number; None unless DONE
    val_loss: float | None  # finished, or over the batches done so far (then labelled so)
    tokens: int | None
    bytes: int | None
    windows: int | None
    batches: int | None
    batches_done: int
    estimate: dict[str, Any] | None = None  # unfinished: value, low, high, half_width, sample, why
    eval_s: float | None = None  # seconds of the attempts that committed the shards, summed
    gpu_hours: float = 0.0  # every attempt of this eval, lost work included (ledger)
    usd: float = 0.0
    gpu_type: str | None = None  # as priced (pod label or cluster.pricing)
    devices: list[str] = field(default_factory=list)  # what torch saw (provenance), "cpu" without a GPU
    artifact_bytes: int | None = None
    error: str | None = None

    @property
    def done(self) -> float:
        return self.batches_done / self.batches if self.batches else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["done"] = self.done
        return d


@dataclass
class RecipeReport:
    name: str
    kind: str
    legality: dict[str, str]
    rows: list[SeedRow]
    bpb: Spread  # finished seeds
    val_loss: Spread
    with_estimates: Spread | None  # finished + the running values of unfinished seeds: an ESTIMATE
    test: TTest | None
    baseline: str | None  # what the test compares against
    baseline_values: tuple[float, ...] = ()
    trajectories: list[Trajectory] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(r.state == "DONE" for r in self.rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "legality": self.legality, "complete": self.complete, "seeds": [r.as_dict() for r in self.rows],
            "val_bpb": self.bpb.as_dict(), "val_loss": self.val_loss.as_dict(),
            "with_estimates": self.with_estimates.as_dict() if self.with_estimates else None,
            "baseline": {"source": self.baseline, "values": list(self.baseline_values), "test": self.test.as_dict()} if self.test else None,
            "trajectory": [t.as_dict() for t in self.trajectories],
        }


@dataclass
class TrainRow:
    seed: int
    state: str
    artifact_bytes: int | None = None
    sha256: str | None = None
    steps: int | None = None
    wall_s: float | None = None
    world_size: int | None = None
    devices: list[str] = field(default_factory=list)
    imported_from: str | None = None  # an eval-only campaign's artifact

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Report:
    campaign: str
    store: str
    generated: float
    seeds: list[int]
    spec_fingerprint: str
    campaign_fingerprint: str | None  # campaign.json: the spec with data by content
    data: dict[str, Any]  # shard and tokenizer digests
    recipes: list[RecipeReport]
    trains: list[TrainRow]
    cost: CostReport
    timeline: Timeline | None
    attempts: list[AttemptProvenance]
    stacks: Stacks
    commands: list[str]  # the driver runs' command lines, as recorded
    baseline: Baseline | None = None
    plan_compare: dict[str, Any] | None = None  # `pipeline plan --compare`'s table, where one was written

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION, "campaign": self.campaign, "store": self.store, "generated": self.generated,
            "seeds": self.seeds, "spec_fingerprint": self.spec_fingerprint, "campaign_fingerprint": self.campaign_fingerprint,
            "data": self.data, "std_note": "std_ddof0: population std, as the records publish it; std_ddof1: sample std (summary.json)",
            "recipes": {r.name: r.as_dict() for r in self.recipes}, "train": [t.as_dict() for t in self.trains],
            "cost": self.cost.as_dict(), "timeline": self.timeline.as_dict() if self.timeline else None,
            "provenance": {"attempts": [a.as_dict() for a in self.attempts], **self.stacks.as_dict()},
            "commands": self.commands, "baseline": self.baseline.as_dict() if self.baseline else None,
            "plan_compare": self.plan_compare,
        }


def _devices(prov: dict[str, Any] | None) -> list[str]:
    if not prov:
        return []
    return sorted(set(prov.get("gpus") or [])) or ["cpu"]


def build_report(spec: CampaignSpec, store: Store, baseline: Baseline | None = None, now: float | None = None, live_run: str | None = None) -> Report:
    from workers.segments import load_progress  # json only, no torch

    now = time.time() if now is None else now
    layout = Layout(spec.name)
    events = Ledger(store, layout, "report").events()
    status = campaign_status(spec, store, now, live_run)
    by_key = {(e.seed, e.recipe): e for e in status.evals}
    attempts = collect_provenance(spec, store, events)
    trains = _trains(spec, store, layout, attempts)
    artifact_bytes = {t.seed: t.artifact_bytes for t in trains}
    flushes: list[tuple[float, int]] = []
    total_batches = 0
    recipes = []
    for recipe in spec.evals:
        rows, trajs = [], []
        windows = None
        for seed in spec.seeds:
            es = by_key[(seed, recipe.name)]
            prog = load_progress(store, layout.eval_dir(seed, recipe.name)) if es.batches is not None else None
            if prog is not None:
                flushes += [(s.time, s.batches) for s in prog.segments if s.time is not None]
                if windows is None:
                    windows = windows_per_batch(spec, recipe, es.batches)
                if prog.records:
                    trajs.append(trajectory(seed, prog.records, es.batches, windows))
            row = _row(spec, store, layout, seed, recipe, es, prog, status.cost, attempts)
            row.artifact_bytes = artifact_bytes.get(seed)
            rows.append(row)
        total_batches += _planned_batches(rows)
        recipes.append(_recipe_report(recipe, rows, trajs, baseline))
    campaign = store.get_json(layout.campaign_json) if store.exists(layout.campaign_json) else {}
    data = (campaign.get("spec") or {}).get("data", {})
    commands = []
    for a in attempts:
        c = (a.provenance or {}).get("command") if a.unit.startswith("train/") and a.committed else None
        if c and c not in commands:
            commands.append(c)
    return Report(
        spec.name, store.uri, now, list(spec.seeds), spec.fingerprint(), campaign.get("fingerprint"),
        {k: data.get(k) for k in ("shards", "tokenizer", "val_tokens") if k in data},
        recipes, trains, status.cost, timeline(status.cost, flushes, total_batches, now), attempts,
        replace(compare_stacks(attempts), spans=spanned_groups(events)), commands, baseline, _plan_compare(spec),
    )


def _plan_compare(spec: CampaignSpec) -> dict[str, Any] | None:
    """The prediction-vs-measured table `pipeline plan --from ... --compare` left beside the
    campaign's summaries; one that does not parse is left out, not fatal to the report."""
    from pipeline.plan.compare import compare_path

    try:
        table = json.loads(compare_path(spec).read_text())
    except (OSError, ValueError):
        return None
    return table if isinstance(table, dict) and table.get("version") == 1 else None


def _planned_batches(rows: list[SeedRow]) -> int:
    """Batches of a recipe over all seeds; an unplanned seed counts as many as a planned one."""
    known = [r.batches for r in rows if r.batches]
    return sum(r.batches or (known[0] if known else 0) for r in rows)


def _trains(spec, store, layout, attempts: list[AttemptProvenance]) -> list[TrainRow]:
    out = []
    for seed in spec.seeds:
        if not store.exists(layout.manifest(seed)):
            out.append(TrainRow(seed, "PENDING"))
            continue
        m = store.get_json(layout.manifest(seed))
        t = m.get("train") or {}
        devices = sorted({d for a in attempts if a.unit == f"train/{seed}" and a.committed for d in _devices(a.provenance)})
        out.append(TrainRow(
            seed, "DONE", m.get("bytes"), m.get("sha256"), t.get("steps"), t.get("wall_s"), t.get("world_size"), devices,
            m.get("imported_from"),
        ))
    return out


def _row(spec, store, layout, seed, recipe, es: EvalStatus, prog, cost: CostReport, attempts) -> SeedRow:
    line = cost.by_seed_recipe.get((seed, recipe.name))
    mine = [a for a in cost.attempts if a.recipe == recipe.name and a.seed == seed]
    gpu_types = sorted({a.gpu_type for a in mine})
    devices = sorted({d for a in attempts if a.unit.startswith(f"eval/{seed}/{recipe.name}/") and a.committed for d in _devices(a.provenance)})
    row = SeedRow(
        seed, recipe.name, es.state, None, None, None, None, es.windows, es.batches, es.batches_done,
        gpu_hours=line.gpu_s / 3600.0 if line else 0.0, usd=line.usd if line else 0.0,
        gpu_type=", ".join(gpu_types) or None, devices=devices, error=es.error,
    )
    if es.state == "DONE":
        r = store.get_json(layout.result(seed, recipe.name))
        row.val_bpb, row.val_loss, row.tokens, row.bytes = r["val_bpb"], r["val_loss"], r["tokens"], r["bytes"]
        row.eval_s = (r.get("run") or {}).get("wall_s")
        return row
    if prog is not None and prog.records:
        recs = prog.records.values()
        tokens = sum(x.tokens for x in recs)
        row.tokens, row.bytes = tokens, sum(x.bytes for x in recs)
        row.val_loss = sum(x.nll for x in recs) / tokens if tokens else None
    est = es.estimate.as_dict() if es.estimate else None
    key = estimate_key(layout, seed, recipe)
    if es.state == "ESTIMATED" and key and store.exists(key):
        stored = store.get_json(key)
        est = {**stored["val_bpb"], "why": stored.get("why"), "interval": "confidence sequence (stop rule)"}
    elif est is not None:
        est["interval"] = "95 % (random sample of batches)" if est["sample"] else "none: a val-order prefix (TTT)"
    row.estimate = est
    return row


def _recipe_report(recipe, rows: list[SeedRow], trajs: list[Trajectory], baseline: Baseline | None) -> RecipeReport:
    done = [r for r in rows if r.state == "DONE"]
    bpb = spread([r.val_bpb for r in done])
    loss = spread([r.val_loss for r in done])
    with_est = None
    pending = [r for r in rows if r.state != "DONE"]
    if pending and all(r.state == "DONE" or (r.estimate and r.estimate.get("value") == r.estimate.get("value")) for r in rows):
        # nan != nan: a seed with no batch done has no running value
        with_est = spread([r.val_bpb if r.state == "DONE" else r.estimate["value"] for r in rows])
    test, label, values = None, None, ()
    if baseline is not None:
        got = baseline.for_recipe(recipe.name)
        if got is not None:
            values, label = got
            test = test_less([r.val_bpb for r in done], list(values))
    return RecipeReport(recipe.name, recipe.kind, recipe.legality.as_dict(), rows, bpb, loss, with_est, test, label, tuple(values), trajs)
