"""Multi-seed summary, computed from the store alone: per-seed val_bpb, mean and sample std."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from pipeline.spec import CampaignSpec
from pipeline.records.ledger import Ledger
from pipeline.progress.stopping import estimate_key
from pipeline.store import Layout, Store

SUMMARY_VERSION = 1
STD_DDOF = 1  # sample standard deviation (n − 1), as the seeds' 3-seed records report it


def build_summary(spec: CampaignSpec, store: Store, timings: dict[str, Any] | None = None) -> dict[str, Any]:
    layout = Layout(spec.name)
    seeds: dict[str, Any] = {}
    for seed in spec.seeds:
        entry: dict[str, Any] = {}
        if store.exists(layout.manifest(seed)):
            m = store.get_json(layout.manifest(seed))
            t = m.get("train", {})  # an artifact committed without our training has no training stats
            entry["train"] = {
                "artifact_bytes": m["bytes"],
                "sha256": m["sha256"],
                **{k: t[k] for k in ("steps", "wall_s", "final_train_loss") if k in t},
            }
            if m.get("kind") == "script":  # a user's train_gpt.py (docs/scripts.md: Bring your own train_gpt.py)
                entry["train"].update(
                    {k: t[k] for k in ("stopped_early", "last_val", "restart") if k in t},
                    script_final=m.get("script_final", {}), size=m.get("size"), script_md5=m["script"]["md5"],
                )
        seeds[str(seed)] = entry
    recipes: dict[str, Any] = {}
    for e in spec.evals:
        per_seed: dict[str, Any] = {}
        for seed in spec.seeds:
            if store.exists(layout.result(seed, e.name)):
                r = store.get_json(layout.result(seed, e.name))
                per_seed[str(seed)] = {k: r[k] for k in ("val_bpb", "val_loss", "tokens", "bytes", "windows", "unigram_bpb")}
                vs = _vs_script(spec, seeds[str(seed)].get("train", {}), e.name, r["val_bpb"])
                if vs is not None:
                    per_seed[str(seed)]["script"] = vs
        bpbs = [v["val_bpb"] for v in per_seed.values()]
        # Evals its stop rule ended: an estimate with its interval and % done, never in the mean.
        estimated = {}
        for seed in spec.seeds:
            key = estimate_key(layout, seed, e)
            if str(seed) not in per_seed and key and store.exists(key):
                est = store.get_json(key)
                estimated[str(seed)] = {**est["val_bpb"], "done": est["done"], "why": est["why"]}
        recipes[e.name] = {
            "kind": e.kind,
            "legality": e.legality.as_dict(),  # from the recipe's definition (docs/recipes.md: Legality)
            "seeds": per_seed,
            "estimated": estimated,
            "n": len(bpbs),
            "complete": len(bpbs) == len(spec.seeds),
            "mean_val_bpb": statistics.fmean(bpbs) if bpbs else None,
            "std_val_bpb": statistics.stdev(bpbs) if len(bpbs) > 1 else None,
            "std_ddof": STD_DDOF,
        }
    return {
        "version": SUMMARY_VERSION,
        "campaign": spec.name,
        "store": store.uri,
        "spec_fingerprint": spec.fingerprint(),
        "seeds": seeds,
        "evals": recipes,
        # what the retry policy gave up on, with the error's last lines (no log reading needed)
        "failed": {
            u: {k: e.get(k) for k in ("reason", "kind", "class", "tail")}
            for u, e in Ledger(store, layout, "summary").failed().items()
        },
        **({"timings": timings} if timings else {}),
    }


def _vs_script(spec: CampaignSpec, train: dict[str, Any], recipe: str, ours: float) -> dict[str, Any] | None:
    """The script's own final number beside ours: the line train.compare names for this recipe,
    else its last final_*_exact line; diff = ours − the script's."""
    finals = train.get("script_final") or {}
    name = getattr(spec.train, "compare", {}).get(recipe) or next(reversed(finals), None)
    if name not in finals:
        return None
    theirs = finals[name]["val_bpb"]
    return {"name": name, "val_bpb": theirs, "diff": ours - theirs}


def write_summary(summary: dict[str, Any], results_dir: str | Path) -> Path:
    out = Path(results_dir) / summary["campaign"] / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    tmp.replace(out)
    return out


def render_table(summary: dict[str, Any]):
    """A rich Table: one row per recipe, one column per seed, then mean ± std."""
    from rich.table import Table

    seeds = list(summary["seeds"])
    table = Table(title=f"{summary['campaign']}: val_bpb (std: sample, ddof={STD_DDOF})")
    table.add_column("eval")
    table.add_column("legality")
    for s in seeds:
        table.add_column(f"seed {s}", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("std", justify="right")
    for name, r in summary["evals"].items():
        cells = [_cell(r, s) for s in seeds]
        mean = f"{r['mean_val_bpb']:.6f}" if r["mean_val_bpb"] is not None else "-"
        std = f"{r['std_val_bpb']:.6f}" if r["std_val_bpb"] is not None else "-"
        table.add_row(name, r.get("legality", {}).get("label", "-"), *cells, mean, std)
    return table


def _cell(r: dict[str, Any], seed: str) -> str:
    if seed in r["seeds"]:
        v = r["seeds"][seed]
        theirs = v.get("script") or {}  # a user's script's own final number, beside ours
        return f"{v['val_bpb']:.6f}" + (f" (script {theirs['val_bpb']:.6f})" if theirs.get("val_bpb") is not None else "")
    est = r.get("estimated", {}).get(seed)
    if est:
        return f"~{est['value']:.5f} ± {est['half_width']:.5f} ({est['done']:.0%}, estimated)"
    return "-"


def is_finite_complete(summary: dict[str, Any]) -> bool:
    return all(
        r["complete"] and all(math.isfinite(v["val_bpb"]) for v in r["seeds"].values()) for r in summary["evals"].values()
    )
