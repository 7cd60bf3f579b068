"""What of a campaign is already committed, read from a few prefix listings (docs/scale.md "Scale").

A driver that starts on a store holding earlier work has to know, for every unit, whether its
commit object exists. Asking per unit (a HEAD per shard) is ~27,000 serial requests for 100 seeds ×
4 recipes × 64 shards: minutes on S3 before the first launch. Instead the driver lists each seed's
folder once (in parallel, a few pages each) and reads the answers off the key names. The store is
still the only judge: a unit is DONE here only because its commit object is listed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pipeline.spec import CampaignSpec, EvalRecipe
from pipeline.store import Layout, Store

LIST_THREADS = 8  # concurrent listings: S3 answers each in tens of ms, one after another would add up


@dataclass
class EvalScan:
    plan: bool = False
    result: bool = False
    estimates: set[str] = field(default_factory=set)  # the estimate objects' keys
    done: set[int] = field(default_factory=set)  # shards whose done.json is listed


@dataclass
class SeedScan:
    trained: bool = False  # its manifest.json is listed
    evals: dict[str, EvalScan] = field(default_factory=dict)


class CampaignScan:
    """The committed state of `spec`'s seeds in `store`."""

    def __init__(self, layout: Layout, seeds: dict[int, SeedScan]):
        self.layout, self.seeds = layout, seeds

    @classmethod
    def read(cls, store: Store, spec: CampaignSpec) -> CampaignScan:
        layout = Layout(spec.name)
        recipes = [r.name for r in spec.evals]
        with ThreadPoolExecutor(max_workers=min(LIST_THREADS, max(1, len(spec.seeds)))) as pool:
            listed = pool.map(lambda s: (s, store.list(layout.seed_dir(s))), spec.seeds)
            return cls(layout, {s: _parse(layout, s, recipes, keys) for s, keys in listed})

    def refresh(self, store: Store, seed: int) -> None:
        """List one seed again (its training finished in this run: a `pipeline eval` elsewhere may
        have committed some of its shards since)."""
        self.seeds[seed] = _parse(self.layout, seed, list(self.seeds[seed].evals), store.list(self.layout.seed_dir(seed)))

    def trained(self, seed: int) -> bool:
        return self.seeds[seed].trained

    def eval(self, seed: int, recipe: str) -> EvalScan:
        return self.seeds[seed].evals[recipe]

    def finished(self, seed: int, recipe: EvalRecipe) -> bool:
        """Merged, or ended early by its current stop rule."""
        from pipeline.progress.stopping import estimate_key

        e = self.eval(seed, recipe.name)
        return e.result or estimate_key(self.layout, seed, recipe) in e.estimates


def _parse(layout: Layout, seed: int, recipes: list[str], keys: list[str]) -> SeedScan:
    out = SeedScan(evals={r: EvalScan() for r in recipes})
    for key in keys:
        what = layout.seed_commit(seed, key)
        if what is None:
            continue
        recipe, kind, shard = what
        if kind == "manifest":
            out.trained = True
        elif (e := out.evals.get(recipe)) is None:
            continue  # an eval the campaign no longer has
        elif kind == "done":
            e.done.add(shard)
        elif kind == "estimate":
            e.estimates.add(key)
        else:
            setattr(e, kind, True)  # plan, result
    return out
