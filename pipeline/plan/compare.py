"""`pipeline plan --from STORE/NAME --compare`: the prediction beside what the ledger measured.

Measured, from the campaign's newest run alone: its makespan (first to last ledger event of the
run), its bill (pipeline/progress/cost.py, the one cost model) and each seed × recipe's seconds
and dollars; the mix predicted for is that run's own nodes, each at the price its run recorded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.plan.mixes import Mix, PodType
from pipeline.plan.simulate import SimResult
from pipeline.plan.throughput import short_type


@dataclass(frozen=True)
class Measured:
    run: str
    makespan_s: float
    usd: float
    by_seed_recipe: dict[tuple[int, str], tuple[float, float]]  # (seconds held, $)
    mix: Mix


def measured_run(spec, store) -> Measured:
    from pipeline.records.ledger import Ledger
    from pipeline.progress.cost import cost_report
    from pipeline.records.nodes import spec_node
    from pipeline.store import Layout

    events = Ledger(store, Layout(spec.name), run_id="plan").events()
    runs = [e for e in events if e.get("event") == "state" and e.get("state") == "RUNNING"]
    if not runs:
        raise ValueError(f"{store.uri}/{spec.name}: no run in the ledger started a unit: nothing measured to compare with")
    run = runs[-1]["run"]
    mine = [e for e in events if e.get("run") == run]
    report = cost_report(mine, mine[-1]["time"], default=spec_node(spec.cluster.pricing))
    by = {k: (sum(a.seconds(mine[-1]["time"]) for a in report.attempts if (a.seed, a.recipe or "train") == k), line.usd)
          for k, line in report.by_seed_recipe.items()}
    nodes = {}
    for e in mine:
        if e.get("event") == "cluster":
            for n in e.get("nodes", []):
                if n.get("alive") and n.get("gpus", 0) > 0:
                    nodes[n["node_id"]] = n
    pods = tuple(PodType(float(n["gpus"]), short_type(n.get("gpu_type") or "unknown"), float(n.get("usd_per_gpu_hour") or 0.0),
                         "the run's ledger") for n in nodes.values())
    name = "+".join(f"1x{p.gpus:g}x{p.gpu_type}" for p in pods) or "none"
    return Measured(run, mine[-1]["time"] - mine[0]["time"], report.total_usd, by, Mix(name, pods))


def comparison(pred: SimResult, meas: Measured) -> dict:
    """Predicted vs measured: the campaign's makespan and $, and per recipe (over seeds) the
    seconds its units held and their $; error = predicted / measured − 1."""

    def err(p: float, m: float) -> float | None:
        return None if m <= 0 else p / m - 1.0

    ps, ms = pred.by_seed_recipe(), meas.by_seed_recipe
    recipes = sorted({r for _, r in ps} | {r for _, r in ms}, key=lambda r: (r != "train", r))
    rows = []
    for r in recipes:
        p_s = sum(v[0] for k, v in ps.items() if k[1] == r)
        m_s = sum(v[0] for k, v in ms.items() if k[1] == r)
        p_u = sum(v[1] for k, v in ps.items() if k[1] == r)
        m_u = sum(v[1] for k, v in ms.items() if k[1] == r)
        rows.append({"recipe": r, "predicted_s": p_s, "measured_s": m_s, "error_s": err(p_s, m_s),
                     "predicted_usd": p_u, "measured_usd": m_u, "error_usd": err(p_u, m_u)})
    return {
        "version": 1, "run": meas.run, "mix": meas.mix.name, "made_at": time.time(),
        "makespan": {"predicted_s": pred.makespan_s, "measured_s": meas.makespan_s, "error": err(pred.makespan_s, meas.makespan_s)},
        "usd": {"predicted": pred.total_usd, "measured": meas.usd, "error": err(pred.total_usd, meas.usd)},
        "recipes": rows,
        "by_seed_recipe": [  # the JSON's detail; the tables show the recipes over seeds
            {"seed": k[0], "recipe": k[1], "predicted_s": ps.get(k, (0.0, 0.0))[0], "measured_s": ms.get(k, (0.0, 0.0))[0],
             "predicted_usd": ps.get(k, (0.0, 0.0))[1], "measured_usd": ms.get(k, (0.0, 0.0))[1]}
            for k in sorted(set(ps) | set(ms))
        ],
    }


def compare_path(spec) -> Path:
    """Where `--compare` leaves its table for `pipeline report`: beside the campaign's summaries."""
    return Path(spec.results_dir) / spec.name / "plan_compare.json"


def write_comparison(spec, table: dict) -> Path:
    p = compare_path(spec)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    tmp.replace(p)
    return p
