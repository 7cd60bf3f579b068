"""Where each object of a campaign lives in the store (`Layout`), how an attempt is named, and
reading names back: the key parsers beside the keys they parse, and `newest` / `newest_first` for
"list a prefix, parse each name, take the newest"."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import TypeVar

from pipeline.store.base import Store

T = TypeVar("T")

_CKPT_RE = re.compile(r"^(.*/ckpt/step-(\d+)(?:-[0-9a-f]+)?)/([^/]+)$")
_TTT_STATE_RE = re.compile(r"/state-(\d+)(?:-[0-9a-f]+)?$")
# the commit objects of one seed, relative to its seed_dir (what a resuming driver reads off a listing)
_SEED_COMMIT_RE = re.compile(r"^(?:train/(manifest)\.json|eval/([^/]+)/(?:(plan|result)\.json|(estimate)-[^/]+\.json|shard-(\d+)/(done)\.json))$")


def new_attempt_id() -> str:
    """Names one attempt of a unit (a Ray task, a worker group, a `pipeline eval` process). Every
    object an attempt writes carries it, so two live attempts of one unit never overwrite each other."""
    return uuid.uuid4().hex[:12]


def _attempt(name: str, attempt: str | None, ext: str = "") -> str:
    return f"{name}-{attempt}{ext}" if attempt else f"{name}{ext}"


class Layout:
    """Where each object of a campaign lives (docs/design.md §3, docs/store.md "Store layout"). Commit objects are
    written create-only and last: manifest.json for a train unit, shard-K/done.json for an eval
    shard, result.json for an eval. Objects an attempt writes before its commit carry its attempt id."""

    def __init__(self, campaign: str):
        self.root = campaign

    @property
    def campaign_json(self) -> str:
        return f"{self.root}/campaign.json"

    @property
    def events(self) -> str:
        return f"{self.root}/events"

    @property
    def lease_dir(self) -> str:
        """The driver that owns the campaign (pipeline/run/lease.py)."""
        return f"{self.root}/lease"

    def seed_dir(self, seed: int) -> str:
        """Everything of one seed: its training and its evals (one listing tells a resuming
        driver what of the seed is committed: pipeline/run/resume.py)."""
        return f"{self.root}/seeds/{seed}"

    def seed_commit(self, seed: int, key: str) -> tuple[str, str, int | None] | None:
        """What a key under `seed_dir(seed)` commits: ("", "manifest", None), (recipe, "plan" |
        "result" | "estimate", None) or (recipe, "done", shard); None for every other object."""
        m = _SEED_COMMIT_RE.match(key[len(self.seed_dir(seed)) + 1 :]) if key.startswith(self.seed_dir(seed) + "/") else None
        if m is None:
            return None
        if m.group(1):
            return "", "manifest", None
        return m.group(2), m.group(3) or m.group(4) or m.group(6), int(m.group(5)) if m.group(5) else None

    def train_dir(self, seed: int) -> str:
        return f"{self.seed_dir(seed)}/train"

    def artifact(self, seed: int, attempt: str | None = None) -> str:
        """The artifact an attempt exported; the manifest names the one that was committed
        (`model.int8.ptz` in stores written before attempts had ids)."""
        return f"{self.train_dir(seed)}/{_attempt('model', attempt, '.int8.ptz')}"

    def manifest(self, seed: int) -> str:
        """Train commit object."""
        return f"{self.train_dir(seed)}/manifest.json"

    def train_log(self, seed: int, attempt: str | None = None) -> str:
        return f"{self.train_dir(seed)}/{_attempt('metrics', attempt, '.json')}"

    def train_ckpt(self, seed: int, step: int, attempt: str) -> str:
        return f"{self.train_dir(seed)}/ckpt/step-{step:08d}-{attempt}"

    @staticmethod
    def ckpt_file(key: str) -> tuple[int, str] | None:
        """(step, folder) of an object in a `train_ckpt` folder (a rank's file or the commit; plain
        `step-<step>` folders in stores written before attempts had ids); None for any other key."""
        m = _CKPT_RE.match(key)
        return (int(m.group(2)), m.group(1)) if m else None

    @staticmethod
    def ckpt_commit(key: str) -> int | None:
        """The step of a `train_ckpt` folder's commit object (`commit.json`); None for any other key."""
        m = _CKPT_RE.match(key)
        return int(m.group(2)) if m and m.group(3) == "commit.json" else None

    def script_log(self, seed: int, attempt: str | None = None, rank: int | None = None) -> str:
        """A training script's output (docs/scripts.md: Bring your own train_gpt.py): each rank's chunks
        `log-<attempt>/rank-R/NNNNNN.txt` in order, and `log-<attempt>/start.json` when it began."""
        out = f"{self.train_dir(seed)}/log-"  # without an attempt: the prefix of every attempt's folder
        return out if attempt is None else f"{out}{attempt}" + ("" if rank is None else f"/rank-{rank}")

    def script_ckpt(self, seed: int, attempt: str | None = None, node: int | None = None) -> str:
        """Snapshots of a script's checkpoint folder, per node (`snap-N.json` + `blobs/<sha256>`)."""
        out = f"{self.train_dir(seed)}/script-ckpt/"
        return out if attempt is None else f"{out}{attempt}" + ("" if node is None else f"/node-{node}")

    def train_error(self, seed: int, attempt: str) -> str:
        """An application error of the worker group (bad input, artifact too large): not retried."""
        return f"{self.train_dir(seed)}/error-{attempt}.json"

    def eval_dir(self, seed: int, recipe: str) -> str:
        return f"{self.seed_dir(seed)}/eval/{recipe}"

    def plan(self, seed: int, recipe: str) -> str:
        return f"{self.eval_dir(seed, recipe)}/plan.json"

    def shard_done(self, seed: int, recipe: str, shard: int) -> str:
        """Commit object of one eval shard."""
        return f"{self.shard_dir(seed, recipe, shard)}/done.json"

    def shard_dir(self, seed: int, recipe: str, shard: int) -> str:
        return f"{self.eval_dir(seed, recipe)}/shard-{shard}"

    def shard_error(self, seed: int, recipe: str, shard: int, attempt: str) -> str:
        """An application error of a multi-GPU eval unit's group: not retried."""
        return f"{self.shard_dir(seed, recipe, shard)}/error-{attempt}.json"

    def segment(self, seed: int, recipe: str, shard: int, attempt: str, n: int) -> str:
        return f"{self.shard_dir(seed, recipe, shard)}/seg-{attempt}-{n:06d}"

    def ttt_state(self, seed: int, recipe: str, shard: int, next_chunk: int, attempt: str) -> str:
        return f"{self.shard_dir(seed, recipe, shard)}/state-{next_chunk:06d}-{attempt}"

    @staticmethod
    def ttt_chunk(key: str) -> int | None:
        """The next_chunk of a `ttt_state` key (plain `state-<chunk>` in stores written before
        attempts had ids); None for any other key."""
        m = _TTT_STATE_RE.search(key)
        return int(m.group(1)) if m else None

    def estimate(self, seed: int, recipe: str, rule: str) -> str:
        """Commit object of an eval stopped early by its stop rule (digest `rule`): ESTIMATED."""
        return f"{self.eval_dir(seed, recipe)}/estimate-{rule}.json"

    def env_file(self, name: str) -> str:
        """An attempt's software stack beside its provenance: `packages-<sha>.txt` (a pip freeze,
        one per distinct stack) and `nvidia-smi-<attempt>.txt` (workers/provenance.py)."""
        return f"{self.root}/env/{name}"

    def run(self, run_id: str) -> str:
        """What one driver run was given: its resolved spec (status and cost read it)."""
        return f"{self.root}/runs/{run_id}.json"

    def result(self, seed: int, recipe: str) -> str:
        """Eval commit object: written when every shard is done, from all their records."""
        return f"{self.eval_dir(seed, recipe)}/result.json"


def newest_first(store: Store, prefix: str, parse: Callable[[str], T | None]) -> list[tuple[T, str]]:
    """(value, key) of every key under `prefix` that `parse` reads a value from (a step, a chunk, a
    generation; None: not one of ours), from one listing, newest first: the larger value first, and
    of equal values the later key. For a caller that falls back to an older one, or prunes."""
    return sorted(((v, k) for k in store.list(prefix) if (v := parse(k)) is not None), reverse=True)


def newest(store: Store, prefix: str, parse: Callable[[str], T | None]) -> tuple[T, str] | None:
    """The first of `newest_first`: (largest value, its key), or None when no key under `prefix` is one of ours."""
    found = newest_first(store, prefix, parse)
    return found[0] if found else None
