"""What a report compares against: `--baseline FILE|BPB,...`.

FILE is another campaign's report.json (each recipe against the baseline's recipe of the same
name, or `--baseline-recipe`; a report with one recipe stands for all), or a parameter-golf
submission.json (its `seed_results`, or its `val_bpb` alone). `BPB,...` are per-seed numbers
(several: Welch's test) or one number (a one-sample test), e.g. a record's published mean.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Baseline:
    source: str  # what the user gave, for the report
    values: tuple[float, ...] = ()  # one list for every recipe
    by_recipe: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def for_recipe(self, name: str) -> tuple[tuple[float, ...], str] | None:
        """(values, label) for a recipe, or None when the baseline has nothing for it."""
        if self.values:
            return self.values, self.source
        if name in self.by_recipe:
            return self.by_recipe[name], f"{self.source} ({name})"
        if len(self.by_recipe) == 1:
            (other, vals), = self.by_recipe.items()
            return vals, f"{self.source} ({other})"
        return None

    def as_dict(self) -> dict:
        return {"source": self.source, "values": list(self.values), "by_recipe": {k: list(v) for k, v in self.by_recipe.items()}}


def parse_baseline(arg: str, recipe: str | None = None) -> Baseline:
    """`recipe`: which recipe of a baseline report.json to compare every recipe against."""
    path = Path(arg)
    if path.is_file():
        return _from_file(path, recipe)
    if path.suffix == ".json" or "/" in arg:
        raise FileNotFoundError(f"--baseline {arg}: no such file")
    values = []
    for part in arg.split(","):
        try:
            v = float(part)
        except ValueError:
            raise ValueError(f"--baseline {arg}: {part.strip()!r} is not a number (give a report.json, a submission.json or BPB,...)") from None
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"--baseline {arg}: {part.strip()} is not a positive bpb")
        values.append(v)
    return Baseline(arg, tuple(values))


def _from_file(path: Path, recipe: str | None) -> Baseline:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a report.json or submission.json (a JSON object)")
    if isinstance(d.get("recipes"), dict):  # our report.json
        by = {
            name: tuple(s["val_bpb"] for s in r.get("seeds", []) if s.get("state") == "DONE" and s.get("val_bpb") is not None)
            for name, r in d["recipes"].items()
        }
        by = {k: v for k, v in by.items() if v}
        if recipe is not None:
            if recipe not in by:
                raise ValueError(f"{path}: recipes: no finished recipe named {recipe!r} (finished: {', '.join(by) or 'none'})")
            return Baseline(str(path), by[recipe])
        if not by:
            raise ValueError(f"{path}: recipes: no recipe has a finished seed")
        return Baseline(str(path), by_recipe=by)
    results = d.get("seed_results")
    if isinstance(results, dict) and results:  # parameter-golf submission.json
        try:
            return Baseline(str(path), tuple(float(r["val_bpb"]) for r in results.values()))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: seed_results: every seed needs a numeric val_bpb") from None
    if isinstance(results, list) and results:
        try:
            return Baseline(str(path), tuple(float(r["val_bpb"]) for r in results))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: seed_results: every seed needs a numeric val_bpb") from None
    if isinstance(d.get("val_bpb"), (int, float)):
        return Baseline(str(path), (float(d["val_bpb"]),))
    raise ValueError(f"{path}: not a report.json or submission.json (no recipes, seed_results or val_bpb)")
