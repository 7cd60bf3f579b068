"""`pipeline plan --calibrate`: a few training steps and a few batches of every recipe, run by the
real driver on the cluster the spec names (a local Ray instance on this machine), then read as a
ledger is read (throughput.py `table_from_store`). The shrunken copy keeps the seeds, the model,
the recipes and the cluster, so units run side by side as in the campaign, and only the step cap
and the val tokens shrink; it lives in a temporary store that is deleted afterwards.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.plan.throughput import ThroughputTable, table_from_store
from pipeline.plan.work import recipe_work
from pipeline.spec import CampaignSpec

CALIBRATE_STEPS = 20  # training steps: enough for a median step past the first ones
BATCHES_PER_GPU = 2  # batches per shard of a shardable recipe: a shard's time splits into start-up and batches
TTT_BATCHES = 4


def val_tokens_for(spec: CampaignSpec, val_tokens: int, gpus: int) -> int:
    """The fewest val tokens that give every recipe its calibration batches (TTT: two chunks)."""
    need = 0
    for e in spec.evals:
        want = TTT_BATCHES if e.ttt is not None else BATCHES_PER_GPU * max(1, e.shards or gpus)
        n = e.seq_len + 1
        while n < val_tokens:
            w = recipe_work(e, n)
            if w.batches >= want and (e.ttt is None or w.ttt_chunks >= 2):
                break
            n = min(val_tokens, n * 3 // 2)
        need = max(need, n)
    return min(val_tokens, need)


def shrunken(spec: CampaignSpec, store: str, val_tokens: int, gpus: int, steps: int = CALIBRATE_STEPS) -> CampaignSpec:
    data = spec.data.model_copy(update={"val_tokens": val_tokens_for(spec, val_tokens, gpus)})
    update = {"name": f"{spec.name}-calibrate", "store": store, "data": data, "budget_usd": None,
              "results_dir": str(Path(store) / "results")}
    if hasattr(spec.train, "max_steps"):
        update["train"] = spec.train.model_copy(update={"max_steps": min(spec.train.max_steps, steps)})
    evals = [e.model_copy(update={"stop_when": None}) for e in spec.evals]
    return spec.model_copy(update={**update, "evals": evals})


def calibrate(spec: CampaignSpec, val_tokens: int, log, address: str | None = None) -> ThroughputTable:
    """Run the shrunken campaign and read its figures; the table's source says how it was made."""
    from pipeline.run.driver import Driver
    from pipeline.run.setup import connect_ray
    from pipeline.store import open_store

    gpus = spec.cluster.local.num_gpus if spec.cluster.address is None and address is None else 1
    with tempfile.TemporaryDirectory(prefix="pipeline-calibrate-") as tmp:
        small = shrunken(spec, tmp, val_tokens, gpus)
        log(f"calibrating on {small.data.val_tokens:,} val tokens and {getattr(small.train, 'max_steps', '?')} training steps "
            f"per seed ({len(small.seeds)} seeds, every recipe), in a temporary store")
        report = Driver(small, log=lambda m: None, connect=lambda: connect_ray(small, address, False)).run()
        if report.failed:
            unit, why = next(iter(report.failed.items()))
            raise ValueError(f"calibration: {unit} FAILED: {why}")
        table = table_from_store(small, open_store(small.store), "calibrate")
    return table.model_copy(update={"campaign": spec.name})
