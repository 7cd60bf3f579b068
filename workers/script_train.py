"""A user's torchrun-style train_gpt.py as the ranks of a Ray Train group (docs/scripts.md: Bring your own
train_gpt.py).

Each Ray Train worker starts the script as one process with the environment torchrun would give
it (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR/MASTER_PORT of a fresh
rendezvous, CUDA_VISIBLE_DEVICES listing the node's GPUs in local-rank order) plus SEED, so an
unchanged record script runs. The worker itself only supervises: it streams the script's output
to the store in chunks, kills it past the time cap plus margin, snapshots a declared checkpoint
folder, and on exit rank 0 uploads the declared artifacts and commits the manifest.

The ranks of one node share one run directory (the script's cwd), as torchrun's do: records write
the artifact on rank 0 and read it back on every rank for their round-trip eval.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.spec import SECRET_ENV_RE, TORCHRUN_ENV, CampaignSpec, ScriptTrain
from pipeline.store import Layout, Store, open_store
from workers.golf_log import parse_log
from workers.script_checkpoints import CheckpointSync, plan_restore, restore_snapshot
from workers.script_logs import TAIL_LINES, LogSink, attempts, last_exception

MANIFEST_VERSION = 1
POLL_S = 0.2
KILL_GRACE_S = 10.0  # SIGTERM, then SIGKILL


class ScriptFailed(RuntimeError):
    """The script ended badly on this rank (raised so Ray Train ends the group now)."""


# --- where each rank sits, as torchrun would say it --------------------------------------------


@dataclass(frozen=True)
class Place:
    rank: int
    world: int
    local_rank: int
    local_world: int
    group_rank: int  # the node's index (torchrun's GROUP_RANK)
    group_world: int
    master_addr: str
    master_port: int
    local_gpus: tuple[str, ...]  # the node's GPU ids in local-rank order: CUDA_VISIBLE_DEVICES


def places(ranks: list[tuple[str, str, tuple[str, ...], int]]) -> list[Place]:
    """Every rank's Place from each rank's (node id, ip, GPU ids, a free port): nodes numbered in
    order of their first rank, local ranks in rank order, the rendezvous at rank 0's ip and port."""
    nodes: list[str] = []
    for node, *_ in ranks:
        if node not in nodes:
            nodes.append(node)
    out = []
    for r, (node, _, _, _) in enumerate(ranks):
        mates = [q for q, other in enumerate(ranks) if other[0] == node]
        gpus = tuple(g for q in mates for g in ranks[q][2])
        out.append(Place(r, len(ranks), mates.index(r), len(mates), nodes.index(node), len(nodes), ranks[0][1], ranks[0][3], gpus))
    return out


def script_env(base: dict[str, str], spec: CampaignSpec, seed: int, place: Place, ckpt_dir: Path | None) -> dict[str, str]:
    """The script's environment: the node's (credentials withheld unless pass_env names them, and
    Ray Train's own rendezvous removed), the data paths as the records' DATA_PATH/TOKENIZER_PATH,
    the spec's env, then what torchrun sets and the campaign's SEED."""
    t: ScriptTrain = spec.train
    env = {k: v for k, v in base.items() if not SECRET_ENV_RE.search(k) or k in t.pass_env}
    for k in TORCHRUN_ENV:
        env.pop(k, None)
    env.update(DATA_PATH=spec.data.shards, TOKENIZER_PATH=spec.data.tokenizer, RUN_ID=f"{spec.name}-seed{seed}", OMP_NUM_THREADS="1")
    env.update(t.env)
    env.update(
        RANK=str(place.rank), LOCAL_RANK=str(place.local_rank), WORLD_SIZE=str(place.world),
        LOCAL_WORLD_SIZE=str(place.local_world), GROUP_RANK=str(place.group_rank), GROUP_WORLD_SIZE=str(place.group_world),
        ROLE_RANK=str(place.rank), ROLE_WORLD_SIZE=str(place.world), MASTER_ADDR=place.master_addr,
        MASTER_PORT=str(place.master_port), TORCHELASTIC_RUN_ID=f"{spec.name}-seed{seed}", SEED=str(seed), PYTHONUNBUFFERED="1",
    )
    if spec.cluster.accelerator == "cuda" and place.local_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(place.local_gpus)
    if ckpt_dir is not None and t.checkpoints is not None and t.checkpoints.env:
        env[t.checkpoints.env] = str(ckpt_dir)
    return env


# --- the script's output ---------------------------------------------------------------------------# --- running and watching the process ----------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    returncode: int
    seconds: float
    timed_out: bool


def _die_with_parent() -> None:
    """In the child: SIGKILL when the worker that started it dies (Ray Train killed the group),
    so no rank outlives its group holding a GPU."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the group's kill on timeout still ends it


def supervise(
    cmd: list[str], env: dict[str, str], cwd: Path, sink: LogSink, timeout_s: float, tick: Callable[[], None] = lambda: None,
) -> Outcome:
    """Run `cmd`, its stdout and stderr line by line into `sink`, `tick()` between polls; past
    `timeout_s` its whole process group is ended (SIGTERM, then SIGKILL)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            lines.put(raw.decode("utf-8", "replace"))
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out, eof = False, False

    def drain() -> None:
        nonlocal eof
        while True:
            try:
                ln = lines.get_nowait()
            except queue.Empty:
                return
            if ln is None:
                eof = True
                return
            sink.add(ln)

    try:
        while proc.poll() is None:
            drain()
            sink.flush()
            tick()
            if time.monotonic() - t0 > timeout_s:
                timed_out = True
                _end(proc)
                break
            time.sleep(POLL_S)
        reader.join(timeout=5.0)  # the rest of its output (a grandchild holding the pipe is not waited for)
        drain()
    finally:
        if proc.poll() is None:
            _end(proc)
        else:
            _kill_group(proc.pid, signal.SIGKILL)  # what it left behind (dataloader workers, compile workers)
    sink.flush(force=True)
    return Outcome(proc.wait(), time.monotonic() - t0, timed_out)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _end(proc: subprocess.Popen) -> None:
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _kill_group(proc.pid, signal.SIGKILL)
    proc.wait()


def describe(outcome: Outcome, script: str, rank: int, timeout_s: float, lines: list[str]) -> str | None:
    """None for a clean exit; else the error: the log's last lines, then one line saying how it
    ended (pipeline/run/errors.py classifies by that line and the lines above it)."""
    if outcome.returncode == 0 and not outcome.timed_out:
        return None
    took = f"after {outcome.seconds:.1f} s"
    if outcome.timed_out:
        how = f"ran past its time cap (max_wallclock_s + margin_s = {timeout_s:.0f} s) and was killed"
    elif outcome.returncode < 0:
        how = f"was killed by {signal.Signals(-outcome.returncode).name} {took}"
    else:
        exc = last_exception(lines)
        how = f"exited with status {outcome.returncode} {took}" + (f": {exc}" if exc else "")
    tail = [ln.rstrip("\n")[:500] for ln in lines[-TAIL_LINES:]]
    return "\n".join([*tail, f"rank {rank}: {script} {how} (whole log: the store's train/log-<attempt>/rank-{rank}/)"])


# --- the checkpoint folder --------------------------------------------------------------------------# --- one rank -----------------------------------------------------------------------------------


def _md5_and_size(path: Path) -> tuple[str, str, int]:
    blob = path.read_bytes()
    return hashlib.md5(blob).hexdigest(), hashlib.sha256(blob).hexdigest(), len(blob)


def run_dir(spec: CampaignSpec, seed: int, attempt: str) -> Path:
    """The node's working directory for this attempt (shared by its local ranks, as under torchrun)."""
    return Path(tempfile.gettempdir()) / "pipeline-script" / spec.name / f"seed-{seed}-{attempt}"


def script_train_loop(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker of a `kind: script` training."""
    import ray
    import ray.train
    import torch

    from workers.group import APP_ERRORS, Group, record_error

    spec = CampaignSpec.model_validate(config["spec"])
    seed, attempt, store_uri = config["seed"], config["attempt"], config["store_uri"]
    store, layout = open_store(store_uri), Layout(spec.name)
    ctx = ray.train.get_context()
    group = Group(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank(), torch.device("cpu"))  # gloo: addresses only
    try:
        _run_rank(spec, seed, attempt, store, layout, group, config.get("context", {}), ray)
    except ScriptFailed:
        raise  # its record (kind: script) is written
    except APP_ERRORS as e:
        record_error(store, layout.train_error(seed, attempt), group.rank, e)
        raise


def _run_rank(spec, seed, attempt, store: Store, layout: Layout, group, context: dict, ray) -> None:
    from workers.group import free_port  # torch: only on a training rank, never in the status view
    t: ScriptTrain = spec.train
    script = Path(t.script_file())
    if not script.is_file():
        raise FileNotFoundError(f"train.script: {script} does not exist on node {ray.util.get_node_ip_address()}")
    md5, sha, nbytes = _md5_and_size(script)
    node = ray.get_runtime_context().get_node_id()
    me = (node, ray.util.get_node_ip_address(), tuple(str(g) for g in ray.get_gpu_ids()), free_port("") if group.rank == 0 else 0)
    everyone = group.all_gather((me, sha))
    if len({s for _, s in everyone}) > 1:
        raise ValueError(f"train.script: {script} differs between nodes (sha256 {sorted({s[:12] for _, s in everyone})}); copy the same file to every node")
    expected = _campaign_script_digest(store, layout)
    if expected is not None and expected != sha:
        raise ValueError(f"train.script: {script} (sha256 {sha[:12]}) is not the script this campaign was started with ({expected[:12]})")
    place = places([r for r, _ in everyone])[group.rank]

    cwd = run_dir(spec, seed, attempt)
    if place.local_rank == 0:  # dirs that earlier attempts of this campaign's seed, killed, left on this node
        for _, earlier in attempts(store, layout, seed):
            if earlier != attempt:
                shutil.rmtree(run_dir(spec, seed, earlier), ignore_errors=True)
    try:
        _run_in(spec, seed, attempt, store, layout, group, context, script, (md5, sha, nbytes), place, cwd)
    finally:
        # failed or not, the attempt's files (a script's checkpoints: GBs) leave the container disk;
        # what a restart needs is in the store (the folder's last snapshot, synced before this). Any
        # local rank removes them: when one rank fails, Ray Train kills the others mid-script.
        shutil.rmtree(cwd, ignore_errors=True)


def _run_in(spec, seed, attempt, store: Store, layout: Layout, group, context: dict, script: Path, digests, place, cwd: Path) -> None:
    """The attempt's script in its run directory `cwd`, from restoring its checkpoint folder to the commit."""
    t: ScriptTrain = spec.train
    md5, sha, nbytes = digests
    ckpt = cwd / t.checkpoints.dir if t.checkpoints is not None else None
    restored = None
    # rank 0 chooses for every node, so all nodes resume from one step even if snapshots land meanwhile
    plan = group.all_gather(plan_restore(store, layout, seed, place.group_world) if ckpt is not None and group.rank == 0 else None)[0]
    if place.local_rank == 0:
        cwd.mkdir(parents=True, exist_ok=True)
        if ckpt is not None:
            ckpt.mkdir(parents=True, exist_ok=True)
            if (key := plan.keys.get(place.group_rank)) is not None:
                restored = restore_snapshot(store, key, ckpt)
    earlier = [a for _, a in attempts(store, layout, seed) if a != attempt] if group.rank == 0 else []
    if group.rank == 0:
        store.put_new_json(f"{layout.script_log(seed, attempt)}/start.json", {
            "version": 1, "time": time.time(), "world_size": place.world, "resumed_from": restored, "earlier_attempts": earlier,
        })
    restored_on = group.all_gather(restored)  # also: every node's folder is ready before any rank starts

    every = min(max(spec.checkpoint_every_s, 0.5), 10.0)
    sink = LogSink(store, layout.script_log(seed, attempt, group.rank), min(spec.checkpoint_every_s, 10.0))
    sync = None
    if ckpt is not None and place.local_rank == 0:
        sync = CheckpointSync(store, layout.script_ckpt(seed, attempt, place.group_rank), ckpt, every, t.keep_checkpoints,
                              nodes=place.group_world, step=t.checkpoints.step)
    cmd = [sys.executable, "-u", str(script), *t.args]
    env = script_env(dict(os.environ), spec, seed, place, ckpt)
    outcome = supervise(cmd, env, cwd, sink, t.timeout_s, tick=sync.scan if sync else lambda: None)
    if sync is not None:
        sync.scan(force=True)  # what it wrote last, if it held still (a restart gets it)
    error = describe(outcome, script.name, group.rank, t.timeout_s, sink.lines)
    if error is not None:
        # first rank's record wins: usually the one that failed first, the others died of its absence
        store.put_new_json(layout.train_error(seed, attempt), {"version": 1, "rank": group.rank, "kind": "script", "error": error})
        raise ScriptFailed(error.rsplit("\n", 1)[-1])
    group.all_gather(None)  # every rank's script has ended well
    if group.rank == 0:
        restart = _restart(t, earlier, [r for r in restored_on if r], plan.why if plan is not None else None)
        _commit(spec, seed, attempt, store, layout, cwd, (script, md5, sha, nbytes), sink, outcome, restart, context)
    group.all_gather(None)  # rank 0 has read the artifacts from the shared run directory


def _campaign_script_digest(store: Store, layout: Layout) -> str | None:
    if not store.exists(layout.campaign_json):
        return None  # a test or `pipeline eval` path without a campaign record
    d = store.get_json(layout.campaign_json).get("spec", {}).get("train", {}).get("script")
    return d if isinstance(d, str) and re.fullmatch(r"[0-9a-f]{64}", d) else None


def _restart(t: ScriptTrain, earlier: list[str], restored: list[str], why_not: str | None = None) -> dict[str, Any]:
    """How this attempt started: fresh, from the checkpoint folder of an earlier one, or a rerun
    from the start (no folder declared, nothing in it yet, or the nodes' snapshots of no one step)."""
    if not earlier:
        return {"mode": "fresh", "earlier_attempts": 0}
    mode = "checkpoint" if restored else "rerun"
    why = None if restored else ("no checkpoints folder declared" if t.checkpoints is None else why_not or "the folder had no snapshot yet")
    return {"mode": mode, "earlier_attempts": len(earlier), "resumed_from": restored, **({"why": why} if why else {})}


def _commit(spec, seed, attempt, store: Store, layout: Layout, cwd: Path, script_info, sink: LogSink, outcome, restart, context) -> None:
    """The declared artifacts and the parsed metrics under this attempt's names, then the manifest
    create-only (another attempt that committed first stands)."""
    from workers.provenance import attempt_provenance

    t: ScriptTrain = spec.train
    script, md5, sha, code_bytes = script_info
    arts = []
    for rel in t.artifacts:
        path = cwd / rel
        if not path.is_file():
            raise FileNotFoundError(f"train.artifacts: {script.name} exited 0 but wrote no {rel} in its working directory")
        blob = path.read_bytes()
        key = f"{layout.train_dir(seed)}/artifact-{attempt}/{rel}"
        store.put_new(key, blob)
        arts.append({"path": rel, "artifact": key.removeprefix(layout.train_dir(seed) + "/"), "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)})
    golf = parse_log(sink.text)
    metrics = golf.metrics()
    store.put_new_json(layout.train_log(seed, attempt), {"version": 1, "kind": "script", "log": [s.as_dict() for s in golf.steps], **metrics})
    total = code_bytes + arts[0]["bytes"]
    manifest = {
        "version": MANIFEST_VERSION,
        "kind": "script",
        "seed": seed,
        "attempt": attempt,
        "artifact": arts[0]["artifact"],  # the one our evals score
        "sha256": arts[0]["sha256"],
        "bytes": arts[0]["bytes"],
        "artifacts": arts,
        "metrics": layout.train_log(seed, attempt).rsplit("/", 1)[1],
        "log": layout.script_log(seed, attempt).rsplit("/", 1)[1] + "/",
        "script": {"path": str(script), "name": script.name, "md5": md5, "sha256": sha, "bytes": code_bytes, "args": list(t.args), "env": dict(t.env)},
        # what the challenge counts: code bytes + artifact bytes, against its limit; reported, not enforced
        "size": {"code_bytes": code_bytes, "artifact_bytes": arts[0]["bytes"], "total_bytes": total,
                 "limit_bytes": t.artifact_limit_bytes, "within_limit": total <= t.artifact_limit_bytes},
        "script_final": metrics.get("finals", {}),
        "train": {**{k: v for k, v in metrics.items() if k != "finals"}, "world_size": t.world_size,
                  "process_s": outcome.seconds, "restart": restart},
        "provenance": {**attempt_provenance(store, layout, attempt), **context, "script_md5": md5},
    }
    if store.put_new_json(layout.manifest(seed), manifest):  # the commit object, written last
        for k in store.list(layout.script_ckpt(seed)):  # trained: no restart will need the folder
            store.delete(k)
    else:
        for k in store.list(f"{layout.train_dir(seed)}/artifact-{attempt}/"):
            store.delete(k)
        store.delete(layout.train_log(seed, attempt))
