"""A script's checkpoint folder kept in the store: snapshots of what changed, per node, every
`checkpoint_every_s`; a restarted group gets back the newest step every node that snapshots has."""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.store import Layout, Store

SNAPSHOT_VERSION = 2  # 2: the group's node count and the files' step ("nodes", "step")
_SNAP_RE = re.compile(r"script-ckpt/([0-9a-f]+)/node-(\d+)/snap-(\d+)\.json$")


def _file_state(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith(".tmp"):
            st = p.stat()
            out[p.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


class CheckpointSync:
    """Snapshots of the script's checkpoint folder in the store: a file set is uploaded once it
    held still (same sizes and mtimes) over one scan interval, so a file being written is not
    taken half-written; blobs are named by content, so an unchanged file is uploaded once."""

    def __init__(self, store: Store, prefix: str, folder: Path, every_s: float, keep: int, nodes: int = 1, step: str = r"(\d+)"):
        self.store, self.prefix, self.folder, self.every_s, self.keep = store, prefix, folder, every_s, keep
        self.nodes, self.step_re = nodes, re.compile(step)  # the group's node count and step pattern, in each snapshot
        self._prev: dict[str, tuple[int, int]] | None = None
        self._uploaded: dict[str, tuple[int, int]] = _file_state(folder) if folder.is_dir() else {}  # what a restore put there
        self._last = 0.0
        self._n = 0
        self.snapshots: list[str] = []

    def scan(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last < self.every_s:
            return
        self._last = time.monotonic()
        now = _file_state(self.folder) if self.folder.is_dir() else {}
        if now and now == self._prev and now != self._uploaded:
            self._snapshot(now)
        self._prev = now

    def _snapshot(self, state: dict[str, tuple[int, int]]) -> None:
        files = {}
        for rel, (size, _) in state.items():
            digest = _sha256_file(self.folder / rel)
            key = f"{self.prefix}/blobs/{digest}"
            if not self.store.exists(key):
                self.store.put(key, (self.folder / rel).read_bytes())
            files[rel] = {"sha256": digest, "bytes": size}
        key = f"{self.prefix}/snap-{self._n:06d}.json"
        snap = {"version": SNAPSHOT_VERSION, "time": time.time(), "nodes": self.nodes, "step": snapshot_step(files, self.step_re), "files": files}
        self.store.put_new_json(key, snap)
        self._n += 1
        self._uploaded = state
        self.snapshots.append(key)
        self._prune()

    def _prune(self) -> None:
        kept = self.snapshots[-self.keep:]
        for old in self.snapshots[: -self.keep]:
            self.store.delete(old)
        self.snapshots = kept
        live = {f["sha256"] for k in kept for f in self.store.get_json(k)["files"].values()}
        for k in self.store.list(f"{self.prefix}/blobs/"):
            if k.rsplit("/", 1)[1] not in live:
                self.store.delete(k)


def snapshot_step(files: dict[str, Any], step_re: re.Pattern[str]) -> int | None:
    """A snapshot's step: the largest number the pattern's first group finds in its file paths."""
    found = [int(m.group(1)) for rel in files for m in step_re.finditer(rel) if m.group(1) and m.group(1).isdigit()]
    return max(found) if found else None


@dataclass(frozen=True)
class RestorePlan:
    """What a restarted group puts back in its nodes' folders: a snapshot key per node (nodes that
    never snapshotted get nothing), or no key and why."""

    keys: dict[int, str]
    step: int | None = None
    why: str | None = None


def _newest(snap: tuple[float, str, dict]) -> tuple[float, str]:
    return snap[0], snap[1]


def plan_restore(store: Store, layout: Layout, seed: int, nodes: int) -> RestorePlan:
    """The snapshots of earlier attempts a group of `nodes` nodes restores. One node: its newest.
    Several: each node writes its own folder (sharded state, or rank 0's alone), so the nodes that
    snapshot must resume from the same step: the newest step every one of them has, each node's
    newest snapshot of it; where the steps cannot be told or no step is common, none (a rerun, not
    a resume that mixes steps)."""
    per_node: dict[int, list[tuple[float, str, dict]]] = {}
    other_shapes = set()
    for k in store.list(layout.script_ckpt(seed)):
        m = _SNAP_RE.search(k)
        if m:
            snap = store.get_json(k)
            if snap.get("nodes", 1) == nodes:  # a version-1 snapshot was written by a one-node group
                per_node.setdefault(int(m.group(2)), []).append((snap["time"], k, snap))
            else:
                other_shapes.add(snap.get("nodes", 1))
    if not per_node:
        if other_shapes:
            return RestorePlan({}, why=f"its snapshots are of a group on {sorted(other_shapes)} node(s), this one is on {nodes}")
        return RestorePlan({}, why="the folder had no snapshot yet")
    if nodes == 1:
        return RestorePlan({0: max(per_node[0], key=_newest)[1]}) if 0 in per_node else RestorePlan({}, why="the folder had no snapshot yet")
    steps = {g: {s[2].get("step") for s in snaps} - {None} for g, snaps in per_node.items()}
    if any(not v for v in steps.values()):
        unnamed = sorted(g for g, v in steps.items() if not v)
        return RestorePlan({}, why=f"the checkpoint files of node(s) {unnamed} name no step (train.checkpoints.step): "
                                   "the nodes' snapshots cannot be matched")
    common = set.intersection(*steps.values())
    if not common:
        seen = ", ".join(f"node {g}: {sorted(v)}" for g, v in sorted(steps.items()))
        return RestorePlan({}, why=f"no step that every node has a snapshot of ({seen})")
    step = max(common)
    return RestorePlan({g: max((s for s in snaps if s[2].get("step") == step), key=_newest)[1] for g, snaps in per_node.items()}, step=step)


def restore_snapshot(store: Store, key: str, folder: Path) -> str:
    """Fill `folder` with the files of the snapshot `key` (each checked against its sha256); the key."""
    snap = store.get_json(key)
    prefix = key.rsplit("/", 1)[0]
    for rel, f in snap["files"].items():
        blob = store.get(f"{prefix}/blobs/{f['sha256']}")
        if hashlib.sha256(blob).hexdigest() != f["sha256"]:
            raise ValueError(f"{store.uri}/{prefix}/blobs/{f['sha256']}: checkpoint file {rel} does not match its sha256")
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(blob)
    return key
