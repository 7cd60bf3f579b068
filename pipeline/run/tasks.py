"""What runs on the cluster for each unit: Ray tasks and Ray Train worker groups (docs/scale.md "Scale").

The driver (pipeline/run/driver.py) decides what starts when and starts it through an executor
(pipeline/run/executor.py); these are the functions the Ray executor runs. Each training is a Ray Train
`TorchTrainer` launched from a zero-CPU Ray task, so trainings and evals are waited on alike; an
eval shard is a `num_gpus=1` task; a multi-GPU TTT unit is a worker group like a training.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from typing import Any

from pipeline.records.ledger import Ledger
from pipeline.records.nodes import LABEL_POD_ID
from pipeline.run.reach import avoid_nodes
from pipeline.run.errors import ScriptError, UnitError
from pipeline.spec import CampaignSpec, ScriptTrain
from pipeline.store import Layout, Store, open_store
from pipeline.records.units import Unit

# A group's collectives (NCCL/gloo) give up after this long: a hung rank ends its group. Our own
# trainer's and a TTT group's ranks step in lockstep, so torch's own default is kept, stated.
COLLECTIVE_TIMEOUT_S = 1800.0
# A script's ranks meet only at its start and end; each script runs up to train.timeout_s, so
# ranks may end that far apart (one rank's final eval), plus the commit's upload.
SCRIPT_END_SLACK_S = 600.0
# Ray Train settings of every group, unless the launcher task's environment sets them (the node's
# `ray start` environment, a job's runtime_env env_vars, or a local `pipeline run`'s own): the driver watches
# nodes itself (pipeline/run/reach.py and Ray's node table) and a RunPod pod is terminated with no
# drain notice, so Ray Train's preemption watcher has nothing to catch (and is one more actor process
# per group, ~2 CPU-s of imports); its metrics go to a Prometheus nobody here reads.
RAY_TRAIN_DEFAULTS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}


def collective_timeout_s(spec: CampaignSpec) -> float:
    """How long a rank of the seed's training group waits in a collective for the others."""
    t = spec.train
    return t.timeout_s + SCRIPT_END_SLACK_S if isinstance(t, ScriptTrain) else COLLECTIVE_TIMEOUT_S


def group_placement(gpus: float, span: bool) -> str:
    """How a group's workers are placed: all on one node (STRICT_PACK, NCCL over NVLink) unless no
    alive node holds the group and the spec lets it spread (cluster.groups_span_nodes): then PACK,
    as few nodes as Ray can. The driver starts a packed group only where one node holds it."""
    if not span or gpus <= 1:
        return "STRICT_PACK"
    import ray

    largest = max((n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n["Alive"]), default=0.0)
    return "STRICT_PACK" if largest >= gpus else "PACK"


def fit_group(
    name: str, loop: Callable, config: dict, workers: int, gpus_per_worker: float, accelerator: str, store: Store, error_key: str,
    placement: str = "STRICT_PACK", timeout_s: float = COLLECTIVE_TIMEOUT_S, avoid: tuple[str, ...] = (),
) -> None:
    """A Ray Train worker group running `loop` (NCCL on cuda, gloo on cpu) until it ends; no
    restarts inside (max_failures=0): a dead or failing rank ends the group at once and the
    driver's retry policy decides what comes next. An application error a rank recorded at
    `error_key` (this attempt's own key) is raised as UnitError (deterministic). No worker goes
    to a node of `avoid` (nodes the driver can no longer reach, that Ray still lists)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    def recorded_error() -> None:
        if store.exists(error_key):
            rec = store.get_json(error_key)
            # a user's script that failed is classified by its log (ScriptError); our own code's error is the unit's
            raise (ScriptError if rec.get("kind") == "script" else UnitError)(rec["error"]) from None

    for key, value in RAY_TRAIN_DEFAULTS.items():  # read by fit() here and passed on to its controller
        os.environ.setdefault(key, value)
    use_gpu = gpus_per_worker > 0
    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"GPU": gpus_per_worker} if use_gpu else {"CPU": 1},
            placement_strategy=placement,
            **({"label_selector": avoid_nodes(avoid)} if avoid else {}),
        ),
        torch_config=TorchConfig(backend="nccl" if accelerator == "cuda" else "gloo", timeout_s=math.ceil(timeout_s)),
        run_config=RunConfig(
            name=f"{name}-{config['attempt']}",
            storage_path=os.path.join(tempfile.gettempdir(), "pipeline-ray-train"),
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    try:
        result = trainer.fit()
    except Exception:
        recorded_error()
        raise
    recorded_error()
    if result.error is not None:
        raise result.error


def _place(spec: CampaignSpec, store_uri: str, run_id: str, unit: Unit, attempt: str, **extra: Any) -> None:
    """The `placed` event of an attempt: node, pod (its label, where the node is a pod), GPUs and pid
    of this process, and the software stack it runs on (every attempt, every rank: docs/reports.md "Reports")."""
    import ray

    from workers.provenance import provenance

    ctx = ray.get_runtime_context()
    labels = ctx.get_node_labels() or {}
    from workers.group import collective_timeout

    if (timeout := collective_timeout()) is not None:  # a group's rank: how long its collectives wait
        extra["collective_timeout_s"] = timeout
    pg = ray.util.get_current_placement_group()
    if pg is not None:  # a group's rank: the driver removes the group's reservation if a node of it dies
        extra["placement_group"] = pg.id.hex()
    Ledger(open_store(store_uri), Layout(spec.name), run_id).placed(
        unit, attempt=attempt, node_id=ctx.get_node_id(), pod=labels.get(LABEL_POD_ID), gpu_ids=[str(g) for g in ray.get_gpu_ids()],
        pid=os.getpid(), provenance=provenance(), **extra,
    )


def _train_group_loop(config: dict) -> None:
    """One rank of a seed's training group (a Ray Train worker)."""
    import ray.train

    from workers.train import ray_train_loop

    from workers.script_train import script_train_loop

    spec = CampaignSpec.model_validate(config["spec"])
    rank = ray.train.get_context().get_world_rank()
    _place(spec, config["store_uri"], config["run_id"], Unit.train(config["seed"]), config["attempt"], rank=rank, placement=config.get("placement"))
    (script_train_loop if isinstance(spec.train, ScriptTrain) else ray_train_loop)(config)


def train_unit(spec_json: dict, seed: int, store_uri: str, context: dict, run_id: str, attempt: str, avoid: tuple[str, ...] = ()) -> dict:
    """Runs in a zero-CPU Ray task: starts the seed's worker group and waits for it. A restarted
    attempt resumes from the newest checkpoint in the store."""
    spec = CampaignSpec.model_validate(spec_json)
    store, layout = open_store(store_uri), Layout(spec.name)
    t = spec.train
    config = {"spec": spec_json, "seed": seed, "store_uri": store_uri, "context": context, "run_id": run_id, "attempt": attempt}
    # A script's ranks rendezvous on their own (NCCL in the script); the group around them only
    # exchanges addresses, over gloo, and never touches a GPU.
    backend = "cpu" if isinstance(t, ScriptTrain) else spec.cluster.accelerator
    config["placement"] = group_placement(t.world_size * t.gpus_per_worker, spec.cluster.groups_span_nodes)
    fit_group(
        f"{spec.name}-seed{seed}", _train_group_loop, config, t.world_size, t.gpus_per_worker, backend,
        store, layout.train_error(seed, attempt), config["placement"], collective_timeout_s(spec), avoid,
    )
    return store.get_json(layout.manifest(seed))["train"]


def eval_unit(spec_json: dict, seed: int, recipe: str, store_uri: str, shard: int, run_id: str, attempt: str) -> dict:
    """Runs in a num_gpus=1 Ray task: one eval shard, resumed from its segments, on the GPU Ray
    assigned to this task (the process may have run other shards on other GPUs before)."""
    import ray

    from workers.device import cuda_index
    from workers.evaluate import run_shard
    from workers.group import Group

    spec = CampaignSpec.model_validate(spec_json)
    index = cuda_index([str(g) for g in ray.get_gpu_ids()], os.environ.get("CUDA_VISIBLE_DEVICES"))
    group = Group.on(0, 1, index, spec.cluster)
    _place(
        spec, store_uri, run_id, Unit.eval(seed, recipe, shard), attempt, device=str(group.device), cuda_index=index,
        cuda_visible=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    try:
        return run_shard(spec, seed, recipe, store_uri, shard, group=group, attempt=attempt)
    finally:
        import torch

        if torch.cuda.is_available():  # the process is reused: hand the shard's memory back
            torch.cuda.empty_cache()


def _eval_group_loop(config: dict) -> None:
    """One rank of a TTT unit on ttt.gpus GPUs (a Ray Train worker)."""
    from workers.evaluate import run_shard
    from workers.group import APP_ERRORS, Group, record_error

    spec = CampaignSpec.model_validate(config["spec"])
    seed, recipe, shard, store_uri, attempt = (config[k] for k in ("seed", "recipe", "shard", "store_uri", "attempt"))
    group = Group.of_ray_train(spec.cluster)
    _place(spec, store_uri, config["run_id"], Unit.eval(seed, recipe, shard), attempt, rank=group.rank, placement=config.get("placement"))
    try:
        run_shard(spec, seed, recipe, store_uri, shard, group=group, attempt=attempt)
    except APP_ERRORS as e:
        # Recorded for the launcher, which marks the unit FAILED; raised so the group stops now
        # rather than leaving the other ranks waiting in a collective.
        record_error(open_store(store_uri), Layout(spec.name).shard_error(seed, recipe, shard, attempt), group.rank, e)
        raise


def eval_group_unit(
    spec_json: dict, seed: int, recipe: str, store_uri: str, shard: int, run_id: str, attempt: str, avoid: tuple[str, ...] = (),
) -> dict:
    """Runs in a zero-CPU Ray task: a TTT unit as a worker group of ttt.gpus ranks. A dead rank
    ends the attempt and the driver resumes the unit from its saved state."""
    spec = CampaignSpec.model_validate(spec_json)
    store, layout = open_store(store_uri), Layout(spec.name)
    config = {"spec": spec_json, "seed": seed, "recipe": recipe, "shard": shard, "store_uri": store_uri, "run_id": run_id, "attempt": attempt}
    gpus = spec.eval_recipe(recipe).gpus
    config["placement"] = group_placement(gpus, spec.cluster.groups_span_nodes)
    fit_group(
        f"{spec.name}-seed{seed}-{recipe}", _eval_group_loop, config, gpus, 1,
        spec.cluster.accelerator, store, layout.shard_error(seed, recipe, shard, attempt), config["placement"], avoid=avoid,
    )
    return store.get_json(layout.shard_done(seed, recipe, shard))
