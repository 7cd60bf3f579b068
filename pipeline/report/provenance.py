"""Which software stack each attempt ran on, and whether the seeds of a report agree (docs/reports.md "Reports").

Every attempt's `placed` event carries its provenance (each rank of a group, so a rank on another
pod shows); the committing attempt of a training (manifest.json) and of each eval shard (done.json)
carries it too, with the keys of its package list and `nvidia-smi -q` in the store's `env/`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.spec import CampaignSpec
from pipeline.store import Layout, Store

# What makes two stacks different: a number can move when any of these does.
STACK_FIELDS = ("python", "torch", "cuda", "cudnn", "nccl", "flash_attn", "ray", "numpy", "gpus", "gpu_driver", "image", "code_sha256", "packages_sha256", "git_commit")


@dataclass(frozen=True)
class AttemptProvenance:
    unit: str  # train/<seed> or eval/<seed>/<recipe>/<shard>
    attempt: str
    rank: int | None
    committed: bool  # this attempt's commit object is the unit's
    provenance: dict[str, Any] | None  # None: not recorded (written before attempts recorded it)

    @property
    def seed(self) -> int:
        return int(self.unit.split("/")[1])

    def stack(self) -> dict[str, Any]:
        p = self.provenance or {}
        s = {k: p.get(k) for k in STACK_FIELDS if k != "image"}
        s["image"] = (p.get("container") or {}).get("image")
        if isinstance(s.get("gpus"), list):
            s["gpus"] = ", ".join(sorted(set(s["gpus"]))) or None
        return s

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_provenance(spec: CampaignSpec, store: Store, events: list[dict[str, Any]]) -> list[AttemptProvenance]:
    layout = Layout(spec.name)
    out: list[AttemptProvenance] = []
    committed: set[str] = set()
    for seed in spec.seeds:
        if store.exists(layout.manifest(seed)):
            m = store.get_json(layout.manifest(seed))
            if m.get("attempt"):
                committed.add(m["attempt"])
            out.append(AttemptProvenance(f"train/{seed}", m.get("attempt") or "?", 0, True, m.get("provenance")))
        for recipe in spec.evals:
            if not store.exists(layout.plan(seed, recipe.name)):
                continue
            shards = len(store.get_json(layout.plan(seed, recipe.name))["shards"])
            for k in range(shards):
                key = layout.shard_done(seed, recipe.name, k)
                if store.exists(key):
                    d = store.get_json(key)
                    committed.add(d.get("attempt") or "?")
                    out.append(AttemptProvenance(f"eval/{seed}/{recipe.name}/{k}", d.get("attempt") or "?", 0, True, d.get("provenance")))
    have = {(a.attempt, a.rank) for a in out}
    for e in sorted(events, key=lambda e: e.get("time", 0.0)):
        if e.get("event") != "placed" or not e.get("attempt"):
            continue
        rank = e.get("rank", 0)
        if (e["attempt"], rank) in have:  # the commit object's copy has the env keys too
            continue
        have.add((e["attempt"], rank))
        out.append(AttemptProvenance(e["unit"], e["attempt"], rank, e["attempt"] in committed, e.get("provenance")))
    return out


@dataclass(frozen=True)
class Stacks:
    stacks: list[dict[str, Any]]  # distinct stacks of the committed attempts, numbered by position
    by_seed: dict[int, dict[str, list[int]]]  # seed → role ("train" or a recipe) → its stacks
    differences: list[str]  # one line per role and field where seeds ran on different values
    unrecorded: list[str]  # committed units whose provenance was not recorded
    spans: list[str] = field(default_factory=list)  # group attempts whose ranks ran on more than one node

    def as_dict(self) -> dict[str, Any]:
        return {"stacks": self.stacks, "by_seed": {str(k): v for k, v in self.by_seed.items()}, "differences": self.differences,
                "unrecorded": self.unrecorded, "spans": self.spans}


def spanned_groups(events: list[dict[str, Any]]) -> list[str]:
    """One line per group attempt (a training, a k-GPU TTT unit) whose ranks ran on several nodes:
    only where cluster.groups_span_nodes let it, and its NCCL then crossed the pods' network."""
    nodes: dict[tuple[str, str], dict[int, str]] = {}
    for e in events:
        if e.get("event") == "placed" and e.get("attempt") and e.get("rank") is not None and e.get("node_id"):
            nodes.setdefault((e["unit"], e["attempt"]), {})[e["rank"]] = e["node_id"]
    return [
        f"{unit} (attempt {attempt}): {len(ranks)} ranks on {len(set(ranks.values()))} nodes"
        for (unit, attempt), ranks in sorted(nodes.items()) if len(set(ranks.values())) > 1
    ]


def _role(unit: str) -> str:
    parts = unit.split("/")
    return "train" if parts[0] == "train" else parts[2]


def compare_stacks(attempts: list[AttemptProvenance]) -> Stacks:
    """Stacks of the attempts whose work the numbers are made of (committed ones, every rank).
    Seeds are compared role by role: training on an 8-GPU pod and evals on 1-GPU pods is one
    setup, not a difference; seed 2's SLOT eval on another torch than seed 1's is."""
    stacks: list[dict[str, Any]] = []
    by_seed: dict[int, dict[str, list[int]]] = {}
    unrecorded = []
    for a in attempts:
        if not a.committed:
            continue
        if a.provenance is None:
            unrecorded.append(a.unit)
            continue
        s = a.stack()
        if s not in stacks:
            stacks.append(s)
        ids = by_seed.setdefault(a.seed, {}).setdefault(_role(a.unit), [])
        if stacks.index(s) not in ids:
            ids.append(stacks.index(s))
    differences = []
    roles = sorted({r for per in by_seed.values() for r in per}, key=lambda r: (r != "train", r))
    for role in roles:
        for field in STACK_FIELDS:
            seen: dict[Any, set[int]] = {}
            for seed, per in by_seed.items():
                for i in per.get(role, []):
                    v = stacks[i].get(field)
                    if v is not None:
                        seen.setdefault(v, set()).add(seed)
            if len(seen) > 1:
                parts = [f"{v} (seed{'s' if len(s) > 1 else ''} {', '.join(map(str, sorted(s)))})" for v, s in seen.items()]
                differences.append(f"{role}: {field}: " + " vs ".join(parts))
    return Stacks(stacks, dict(sorted(by_seed.items())), differences, sorted(set(unrecorded)))
