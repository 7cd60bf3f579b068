"""Evals planned once their seed is trained, and merged once their last shard is DONE.

A trained seed's evals are planned when the cluster has GPUs to shard them over: the shard count
follows the cluster's GPUs then, not when the driver started. Each shard is a unit; an eval whose
shards are all DONE is merged into its result after the GPUs have their next work.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.progress.stopping import estimate_key
from pipeline.records.units import Unit, UnitState
from pipeline.run.context import RunContext, default_shards
from pipeline.run.report import RunReport
from pipeline.run.resume import LIST_THREADS, CampaignScan
from pipeline.run.scheduler import Capacity
from pipeline.spec import EvalRecipe


class EvalPlanner:
    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.scan: CampaignScan | None = None
        self.scan_fresh = True  # the scan was taken as this run began
        self.unplanned: list[int] = []  # seeds whose training is done but whose evals are not planned
        self.to_merge: set[tuple[int, str]] = set()  # evals whose last shard just finished
        self.commits: dict[tuple[int, str], dict[int, dict]] = {}  # shards' done.json as their attempts returned them
        self.recipe_batches: dict[str, int] = {}  # batches of a recipe's plan (the same for every seed)
        self.geometry: dict[str, tuple[int, int]] = {}  # recipe → (windows, batches) for new plans

    def plan_ready(self, capacity: Capacity, report: RunReport) -> bool:
        """Plan the evals of trained seeds, if the cluster has GPUs; True if it planned any. The
        plans (plan.json, written once) are read or written in parallel: a resumed sweep has
        hundreds of them."""
        if not self.unplanned or capacity.total <= 0:
            return False
        from workers.plan import ensure_plan, plan_geometry  # data-plane imports only when there is work

        ctx = self.ctx
        seeds, self.unplanned = self.unplanned, []
        for seed in seeds:
            # trained in this run, or planned later than the run's start (no GPUs then): what other
            # processes (a fenced driver, `pipeline eval`) committed since the scan counts too
            if not self.scan_fresh or not self.scan.trained(seed):
                self.scan.refresh(ctx.store, seed)
        todo = [(s, r) for s in seeds for r in ctx.spec.evals if not self.scan.eval(s, r.name).result]
        for r in {r.name: r for _, r in todo}.values():
            if r.name not in self.geometry and not all(self.scan.eval(s, r.name).plan for s, q in todo if q is r):
                self.geometry[r.name] = plan_geometry(ctx.spec, r)
        shards = default_shards(capacity)
        with ThreadPoolExecutor(max_workers=LIST_THREADS) as pool:
            plans = list(pool.map(
                lambda sr: ensure_plan(ctx.store, ctx.spec, sr[0], sr[1], shards, self.geometry.get(sr[1].name)), todo,
            ))
        for (seed, recipe), plan in zip(todo, plans, strict=True):
            self._track(seed, recipe, plan, report)
        return True

    def _track(self, seed: int, recipe: EvalRecipe, plan: dict, report: RunReport) -> None:
        """One unit per shard of a planned eval, DONE or ESTIMATED where the store says so."""
        ctx = self.ctx
        scan = self.scan.eval(seed, recipe.name)
        est = estimate_key(ctx.layout, seed, recipe)
        estimated = est in scan.estimates
        self.recipe_batches[recipe.name] = plan["batches"]
        states = [
            UnitState.DONE if k in scan.done else UnitState.ESTIMATED if estimated else UnitState.PENDING
            for k in range(len(plan["shards"]))
        ]
        shards = ctx.sched.add_eval(seed, recipe.name, [len(b) for b in plan["shards"]], states)
        report.skipped += [u for u, st in zip(shards.units, states, strict=True) if st is not UnitState.PENDING]
        if estimated:
            report.estimated[f"{seed}/{recipe.name}"] = ctx.store.get_json(est)["why"]
        if shards.complete:
            self.to_merge.add((seed, recipe.name))

    def shard_done(self, u: Unit, out: dict[str, Any]) -> None:
        """A shard's attempt returned: keep its commit object (the merge need not read it again);
        the eval is merged once its last shard is DONE."""
        if out.get("shard") == u.shard:
            self.commits.setdefault((u.seed, u.recipe), {})[u.shard] = out
        if self.ctx.sched.evals[(u.seed, u.recipe)].complete:
            self.to_merge.add((u.seed, u.recipe))

    def merge_ready(self) -> None:
        """Merge every eval whose last shard finished: bookkeeping the GPUs never wait on."""
        for seed, recipe in sorted(self.to_merge):
            self._merge(seed, recipe)
        self.to_merge.clear()

    def _merge(self, seed: int, recipe: str) -> None:
        from workers.result import merge_result  # numpy only: the driver never imports torch for this

        ctx = self.ctx
        r = merge_result(ctx.store, ctx.layout, seed, ctx.spec.eval_recipe(recipe), self.commits.pop((seed, recipe), None))
        note = f"; {len(r['conflicts'])} batch(es) scored differently by two attempts" if r.get("conflicts") else ""
        ctx.log(f"result seed {seed} {recipe}: val_bpb {r['val_bpb']:.6f} ({r['shards']} shard(s)){note}")
