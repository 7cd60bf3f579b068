"""Units whose work is replaced by a fake that commits what the real unit would, at once.

A training's fake commits its manifest (no artifact: the fake evals never load one); an eval
shard's fake writes one segment with a record per batch of its plan, then its done.json: what the
driver's merge reads. Same signatures as pipeline/run/tasks.py's `train_unit` and `eval_unit`, so the
real driver, plans, store and merge run and only the GPU work is gone (bench/scale_bench.py,
tests/pipeline/run/test_scale.py).
"""

from __future__ import annotations

import threading
from collections import Counter
from functools import lru_cache
from typing import Any

from pipeline.spec import CampaignSpec
from pipeline.store import Layout, open_store


_LOCK = threading.Lock()


def _store(uri: str):
    """One Store per process and URI: making a boto3 client per unit would be the fake's whole cost
    (and boto3's default session must not make two at once)."""
    with _LOCK:
        return _open(uri)


@lru_cache(maxsize=8)
def _open(uri: str):
    return open_store(uri)


@lru_cache(maxsize=1024)
def _plan_shards(store_uri: str, key: str) -> list[list[int]]:
    """A plan never changes once written: read once per process, as a real shard's process would not
    re-read it per batch either."""
    return _store(store_uri).get_json(key)["shards"]


def fake_train(spec_json: dict, seed: int, store_uri: str, context: dict, run_id: str, attempt: str) -> dict[str, Any]:
    spec = CampaignSpec.model_validate(spec_json)
    manifest = {"version": 1, "seed": seed, "sha256": "0" * 64, "bytes": 0, "train": {"steps": 0}}
    _store(store_uri).put_new_json(Layout(spec.name).manifest(seed), manifest)
    return {"steps": 0}


def fake_eval(spec_json: dict, seed: int, recipe: str, store_uri: str, shard: int, run_id: str, attempt: str) -> dict[str, Any]:
    from workers.segments import Record, encode_segment

    spec = CampaignSpec.model_validate(spec_json)
    store, layout = _store(store_uri), Layout(spec.name)
    batches = _plan_shards(store_uri, layout.plan(seed, recipe))[shard]
    records = [Record(b, 1.0 + 1e-6 * b, 16, 64) for b in batches]
    store.put_new(layout.segment(seed, recipe, shard, attempt, 0), encode_segment(records))
    done = {
        "version": 1, "shard": shard, "attempt": attempt, "batches": len(batches), "gpus": 1, "artifact_sha256": "0" * 64,
        "unigram_bpb": 0.0, "run": {k: 0 for k in ("resumed_batches", "scored_batches", "score_s", "ttt_s", "flush_s", "wall_s")},
    }
    key = layout.shard_done(seed, recipe, shard)
    return done if store.put_new_json(key, done) else store.get_json(key)  # a real shard returns the commit too


class CountingStore:
    """A Store with every call counted by method name; a `get_many` of N keys is N requests."""

    def __init__(self, inner):
        self.inner, self.calls, self._lock = inner, Counter(), threading.Lock()

    @property
    def requests(self) -> int:
        return sum(self.calls.values())

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def counted(*a, **kw):
            with self._lock:  # the driver's listing, planning and merge threads count too
                self.calls[name] += len(a[0]) if name.startswith("get_many") else 1
            return attr(*a, **kw)

        return counted
