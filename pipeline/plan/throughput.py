"""The throughput table: measured seconds per training step and per eval batch, per GPU type.

Never guessed: a table comes from `pipeline plan --calibrate` (a shrunken copy of the campaign run
by the real driver, calibrate.py) or from an earlier campaign's ledger (`--from STORE/NAME`), and
both read it the same way, here: each DONE attempt's seconds (ledger) split by what the unit
itself timed (a shard's done.json `run`: score, TTT and flush seconds; a training's manifest:
its training clock), so one unit's time is

    startup_s + batches × batch_s      (an eval shard)
    startup_s + min(steps × step_s, max_wallclock_s)   (a training)

Summed over attempts, not medians: seconds per batch is the attempts' batch seconds over their
batches, start-up the attempts' mean, so the figures give back the measured run's unit-seconds (a
first shard in a fresh worker process pays imports a reused one does not; a median drops it).

The file is versioned JSON (pydantic); a table that does not parse is one line naming the file.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

TABLE_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecipeRate(_Strict):
    batch_s: float = Field(gt=0, description="seconds per batch of one unit (a k-GPU TTT unit's batch on its k GPUs)")
    startup_s: float = Field(ge=0, description="a unit's seconds outside its batches: start, model load, commit")
    samples: int = Field(ge=1, description="attempts the figures are summed over")


class TrainRate(_Strict):
    step_s: float = Field(gt=0, description="seconds per training step of the whole group")
    startup_s: float = Field(ge=0, description="a training's seconds outside its step loop")
    samples: int = Field(ge=1)


class GpuRates(_Strict):
    train: TrainRate | None = None
    recipes: dict[str, RecipeRate] = Field(default_factory=dict)


class ThroughputTable(_Strict):
    version: Literal[1] = TABLE_VERSION
    campaign: str
    source: str = Field(description="calibrate, or the STORE/NAME whose ledger it was read from")
    measured_at: float
    driver_start_s: float = Field(0.0, ge=0, description="a run's seconds from its start to its first launch (Ray, planning)")
    gpu_types: dict[str, GpuRates]


def load_table(path: str | Path) -> ThroughputTable:
    """A stored table; anything wrong with it is one ValueError line naming the file."""
    p = Path(path)
    try:
        return ThroughputTable.model_validate(json.loads(p.read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no throughput table (`pipeline plan SPEC --calibrate` measures one)") from None
    except (OSError, ValueError) as e:
        if isinstance(e, ValidationError):
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "(top)"
            why = f"{where}: {first['msg']}"
        else:
            why = " ".join(str(e).split())[:200]
        raise ValueError(f"{p}: not a throughput table this pipeline reads (version {TABLE_VERSION}): {why}") from None


def write_table(table: ThroughputTable, path: str | Path) -> Path:
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(table.model_dump(mode="json"), indent=1, sort_keys=True) + "\n")
    tmp.replace(p)
    return p


def table_path(spec_file: str | Path) -> Path:
    """Where a campaign file's table lives: beside it (jobs/demo.yaml → jobs/demo.throughput.json)."""
    p = Path(spec_file)
    return p.with_name(p.stem + ".throughput.json")


def short_type(gpu_type: str) -> str:
    """A GPU type as mixes spell it: RunPod's "NVIDIA H100 80GB HBM3" and the demo's
    "H100-equivalent" are both H100 (the first word holding a digit)."""
    for word in gpu_type.replace("-", " ").split():
        if any(c.isdigit() for c in word):
            return word.upper()
    return gpu_type.upper()


def rates_for(table: ThroughputTable, gpu_type: str) -> GpuRates | None:
    """The table's figures for a mix's GPU type, by exact name or short name."""
    if gpu_type in table.gpu_types:
        return table.gpu_types[gpu_type]
    want = short_type(gpu_type)
    return next((r for t, r in sorted(table.gpu_types.items()) if short_type(t) == want), None)


# --- from a ledger ------------------------------------------------------------------------------


def table_from_store(spec, store, source: str) -> ThroughputTable:
    """The figures of a campaign's DONE attempts (its ledger and the commits they wrote)."""
    from pipeline.records.ledger import Ledger
    from pipeline.progress.cost import cost_report
    from pipeline.records.nodes import spec_node
    from pipeline.store import Layout, NotFoundError

    layout = Layout(spec.name)
    events = Ledger(store, layout, run_id="plan").events()
    if not events:
        raise ValueError(f"{source}: the campaign's ledger is empty: no run to take figures from")
    report = cost_report(events, time.time(), default=spec_node(spec.cluster.pricing))
    train: dict[str, list[tuple[float, float, int]]] = {}  # gpu type → (startup s, step-loop s, steps)
    evals: dict[tuple[str, str], list[tuple[float, float, int]]] = {}  # (gpu type, recipe) → (startup s, batch s, batches)
    for a in report.attempts:
        if a.outcome != "DONE" or a.end is None:
            continue
        secs = a.end - a.start
        try:
            if a.recipe is None:
                t = store.get_json(layout.manifest(a.seed)).get("train") or {}
                if t.get("steps") and t.get("wall_s") is not None and not t.get("resumed"):
                    train.setdefault(a.gpu_type, []).append((max(0.0, secs - t["wall_s"]), t["wall_s"], t["steps"]))
            else:
                shard = int(a.unit.split("/")[3])
                done = store.get_json(layout.shard_done(a.seed, a.recipe, shard))
                run = done.get("run") or {}
                n = done.get("batches") or 0  # the unit's batches: a k-rank group's rank 0 scores only its share
                if done.get("attempt") == a.attempt and n > 0 and not run.get("resumed_batches"):
                    work = run.get("score_s", 0.0) + run.get("ttt_s", 0.0) + run.get("flush_s", 0.0)
                    evals.setdefault((a.gpu_type, a.recipe), []).append((max(0.0, secs - work), work, n))
        except NotFoundError:
            continue  # a commit another run replaced: its figures are not this attempt's
    types: dict[str, GpuRates] = {}
    for g, xs in train.items():
        types.setdefault(g, GpuRates()).train = TrainRate(step_s=_per(xs), startup_s=_mean_startup(xs), samples=len(xs))
    for (g, r), xs in evals.items():
        types.setdefault(g, GpuRates()).recipes[r] = RecipeRate(batch_s=_per(xs), startup_s=_mean_startup(xs), samples=len(xs))
    if not types:
        raise ValueError(f"{source}: no DONE attempt in the ledger has figures to read (run the campaign, or --calibrate)")
    return ThroughputTable(campaign=spec.name, source=source, measured_at=time.time(), driver_start_s=_driver_start(events), gpu_types=types)


def _per(xs: list[tuple[float, float, int]]) -> float:
    """Seconds per step (batch) over all the attempts: their loop seconds over their steps."""
    return max(1e-9, sum(x[1] for x in xs) / sum(x[2] for x in xs))


def _mean_startup(xs: list[tuple[float, float, int]]) -> float:
    return float(statistics.fmean(x[0] for x in xs))


def _driver_start(events: list[dict[str, Any]]) -> float:
    """Median over runs of (first launch − the run's first event): Ray start-up and planning."""
    first: dict[str, float] = {}
    launch: dict[str, float] = {}
    for e in events:
        run = e.get("run", "")
        first.setdefault(run, e["time"])
        if e.get("event") == "state" and e.get("state") == "RUNNING":
            launch.setdefault(run, e["time"])
    gaps = [launch[r] - first[r] for r in launch]
    return float(statistics.median(gaps)) if gaps else 0.0
