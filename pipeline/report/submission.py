"""submission.json in the parameter-golf records' format, filled from the store (docs/reports.md "Reports").

The records publish: name, blurb, date, val_loss, val_bpb (3-seed means), val_bpb_std (ddof = 0),
seeds, seed_results (per seed), bytes_total (artifact + code), bytes_code, hardware. What the store
cannot know (the name, the blurb, the author, the code's bytes for a script it did not see) is left
empty and listed under `pipeline.to_fill`; the same list is printed and in report.md.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pipeline.report.collect import RecipeReport, Report

SUBMISSION_VERSION = 1


def pick_recipe(report: Report, name: str | None) -> RecipeReport | None:
    """The named recipe, or the best (lowest mean) of those every seed finished, or the best of the rest."""
    if name is not None:
        for r in report.recipes:
            if r.name == name:
                return r
        raise ValueError(f"--recipe {name}: not one of the campaign's evals ({', '.join(r.name for r in report.recipes)})")
    scored = [r for r in report.recipes if r.bpb.mean is not None]
    complete = [r for r in scored if r.complete]
    pool = complete or scored
    return min(pool, key=lambda r: r.bpb.mean) if pool else None


def _hardware(report: Report, recipe: RecipeReport) -> str:
    parts = []
    for t in report.trains:
        if t.devices:
            parts.append(f"train {t.world_size or 1}x{'/'.join(t.devices)}")
            break
    devices = sorted({d for row in recipe.rows for d in row.devices})
    if devices:
        parts.append(f"eval {'/'.join(devices)}")
    return "; ".join(parts)


def build_submission(report: Report, recipe: RecipeReport, bytes_code: int | None = None) -> dict[str, Any]:
    done = [row for row in recipe.rows if row.state == "DONE"]
    artifact = max((t.artifact_bytes or 0 for t in report.trains), default=0) or None
    seed_results: dict[str, Any] = {}
    for row in recipe.rows:
        if row.state == "DONE":
            seed_results[str(row.seed)] = {
                "val_loss": row.val_loss, "val_bpb": row.val_bpb, "artifact_bytes": row.artifact_bytes,
                "bytes_total": (row.artifact_bytes + bytes_code) if row.artifact_bytes is not None and bytes_code is not None else None,
                "eval_seconds": row.eval_s,
            }
        elif row.estimate:  # never a bare number: its share done and interval go with it
            seed_results[str(row.seed)] = {"status": row.state, "estimate": row.estimate, "done": row.done}
    finished = len(done) == len(recipe.rows) and bool(done)
    date = dt.datetime.fromtimestamp(report.generated, dt.timezone.utc).date().isoformat()
    sub: dict[str, Any] = {
        "name": "",
        "blurb": "",
        "author": "",
        "github_id": "",
        "date": date,
        "val_loss": recipe.val_loss.mean if finished else None,
        "val_bpb": recipe.bpb.mean if finished else None,
        "val_bpb_std": recipe.bpb.std_ddof0 if finished else None,
        "bytes_total": (artifact + bytes_code) if artifact is not None and bytes_code is not None else None,
        "bytes_code": bytes_code,
        "bytes_model": artifact,
        "seeds": list(report.seeds),
        "seed_results": seed_results,
        "hardware": _hardware(report, recipe),
    }
    to_fill = [k for k in ("name", "blurb", "author", "github_id") if not sub[k]]
    if bytes_code is None:
        to_fill += ["bytes_code", "bytes_total"]  # artifact + the training script's bytes
    if not finished:
        to_fill += ["val_loss", "val_bpb", "val_bpb_std"]
    sub["pipeline"] = {
        "version": SUBMISSION_VERSION,
        "campaign": report.campaign,
        "recipe": recipe.name,
        "legality": recipe.legality,
        "status": "complete" if finished else f"{len(done)} of {len(recipe.rows)} seeds finished: means left empty",
        "val_bpb_std_ddof": 0,
        "val_bpb_std_ddof1": recipe.bpb.std_ddof1 if finished else None,
        "spec_fingerprint": report.spec_fingerprint,
        "to_fill": to_fill,
    }
    return sub
