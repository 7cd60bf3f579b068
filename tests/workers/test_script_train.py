"""The parts of running a user's train_gpt.py that need no Ray: its log lines as metrics, the
torchrun environment of each rank, the time cap on a hanging process, the error text the driver
classifies, and the checkpoint folder's round trip through the store."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from pipeline.run.errors import ErrorClass, ScriptError, classify
from pipeline.spec import parse_spec
from pipeline.store import Layout, open_store
from tests.conftest import make_spec
from workers.golf_log import parse_log
from workers.script_checkpoints import CheckpointSync, plan_restore, restore_snapshot
from workers.script_logs import LogSink, read_log
from workers.script_train import Outcome, _restart, describe, places, script_env, supervise

# The baseline train_gpt.py's lines, as a record's log holds them (values from its README's run).
BASELINE_LOG = """\
logs/abc.txt
step:0/20000 val_loss:6.9357 val_bpb:4.1077 train_time:0ms step_avg:0.02ms
step:1/20000 train_loss:6.9370 train_time:43ms step_avg:43.22ms
step:200/20000 train_loss:2.9117 train_time:14123ms step_avg:70.62ms
step:8000/20000 val_loss:2.0602 val_bpb:1.2202 train_time:560136ms step_avg:70.02ms
[rank0]: step:8512/20000 val_loss:2.0578 val_bpb:1.2187 train_time:600035ms step_avg:70.49ms
stopping_early: wallclock_cap train_time:600035ms step:8512/20000
peak memory allocated: 10184 MiB reserved: 10588 MiB
Serialized model: 67224983 bytes
Code size: 47686 bytes
Total submission size: 67272669 bytes
Serialized model int8+zlib: 15815847 bytes (payload:17178912 raw_torch:17224025 payload_ratio:3.91x)
Total submission size int8+zlib: 15863533 bytes
final_int8_zlib_roundtrip val_loss:2.0597 val_bpb:1.2199 eval_time:1395ms
final_int8_zlib_roundtrip_exact val_loss:2.05971281 val_bpb:1.21986701
"""


def script_spec(data_dir, store: str, train: dict, **overrides):
    """The tests' tiny campaign with `train:` a script recipe (make_spec merges into the gpt one)."""
    d = make_spec(data_dir, store, **overrides).model_dump(mode="json")
    d["train"] = {"kind": "script", **train}
    return parse_spec(d)


def test_parameter_golf_log_lines_become_training_metrics():
    m = parse_log(BASELINE_LOG).metrics()
    assert m["steps"] == 8512 and m["planned_steps"] == 20000
    assert m["wall_s"] == pytest.approx(600.035) and m["step_avg_ms"] == pytest.approx(70.49)
    assert m["final_train_loss"] == pytest.approx(2.9117)
    assert m["last_val"] == {"step": 8512, "val_loss": 2.0578, "val_bpb": 1.2187}
    assert m["stopped_early"] == "wallclock_cap"
    assert m["serialized_bytes"] == {"model": 67224983, "int8+zlib": 15815847}
    assert m["code_bytes_logged"] == 47686
    assert m["final"] == {"name": "final_int8_zlib_roundtrip_exact", "val_loss": 2.05971281, "val_bpb": 1.21986701}
    assert list(m["finals"]) == ["final_int8_zlib_roundtrip_exact"]  # the 4-digit line is not an _exact one
    assert parse_log("warmup_step:5/20\nstep:3/10\nhello\n").metrics() == {}  # counters without metrics are not steps


def test_each_rank_gets_the_environment_torchrun_would_give(data_dir, tmp_path):
    # ranks 0, 1 on node A (GPUs 3, 1: Ray's order), 2, 3 on node B
    ps = places([("A", "10.0.0.1", ("3",), 29511), ("A", "10.0.0.1", ("1",), 0), ("B", "10.0.0.2", ("0",), 0), ("B", "10.0.0.2", ("5",), 0)])
    assert [(p.local_rank, p.local_world, p.group_rank, p.group_world) for p in ps] == [(0, 2, 0, 2), (1, 2, 0, 2), (0, 2, 1, 2), (1, 2, 1, 2)]
    assert ps[3].local_gpus == ("0", "5") and ps[1].local_gpus == ("3", "1")  # cuda:LOCAL_RANK is the rank's own GPU
    spec = script_spec(data_dir, str(tmp_path / "store"), {
        "script": str(tmp_path), "world_size": 4, "env": {"QK_GAIN_INIT": "5.0", "RUN_ID": "mine"},
        "pass_env": ["HF_TOKEN"], "checkpoints": {"env": "CKPT_DIR"},
    }, cluster={"accelerator": "cuda"})
    base = {"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "RUNPOD_API_KEY": "k", "HF_TOKEN": "hf", "MASTER_PORT": "1", "RANK": "9"}
    env = script_env(base, spec, 1337, ps[3], tmp_path / "ck")
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "SEED")} == {
        "RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1",
        "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29511", "SEED": "1337",
    }
    assert env["CUDA_VISIBLE_DEVICES"] == "0,5" and env["CKPT_DIR"] == str(tmp_path / "ck")
    assert env["QK_GAIN_INIT"] == "5.0" and env["RUN_ID"] == "mine" and env["DATA_PATH"] == spec.data.shards
    assert "AWS_SECRET_ACCESS_KEY" not in env and "RUNPOD_API_KEY" not in env and env["HF_TOKEN"] == "hf"


@pytest.mark.parametrize("env, field", [
    ({"SEED": "1"}, "train.env: Value error, SEED: set by the pipeline"),
    ({"AWS_SECRET_ACCESS_KEY": "x"}, "looks like a credential"),
])
def test_script_env_rules(data_dir, tmp_path, env, field):
    from pipeline.spec import SpecError

    with pytest.raises(SpecError, match=field):
        script_spec(data_dir, str(tmp_path), {"script": "x.py", "env": env})


@pytest.mark.parametrize("step, field", [
    ("(", "train.checkpoints.step: Value error, '(' is not a regex"),
    (r"step_\d+", "has no group: its first group is the step"),
])
def test_a_checkpoint_step_pattern_must_compile_and_have_a_group(data_dir, tmp_path, step, field):
    from pipeline.spec import SpecError

    with pytest.raises(SpecError, match=re.escape(field)):
        script_spec(data_dir, str(tmp_path), {"script": "x.py", "checkpoints": {"step": step}})
    at_default = script_spec(data_dir, str(tmp_path), {"script": "x.py", "checkpoints": {}})
    assert "step" not in at_default.fingerprint_dict()["train"]["checkpoints"]  # campaigns from before it keep their identity


def test_the_gpt_recipe_keeps_its_fingerprint_and_kind_is_optional(data_dir, tmp_path):
    a = make_spec(data_dir, str(tmp_path))
    b = make_spec(data_dir, str(tmp_path), train={"kind": "gpt"})
    assert a == b and "kind" not in a.fingerprint_dict()["train"] and a.fingerprint() == b.fingerprint()
    d = a.model_dump(mode="json")
    assert parse_spec(d) == a  # a dumped spec (the driver → workers) parses to the same recipe


def _sink(tmp_path) -> LogSink:
    return LogSink(open_store(str(tmp_path / "store")), "t/log", every_s=0.0)


def test_a_hanging_process_is_ended_by_its_time_cap(tmp_path):
    sink = _sink(tmp_path)
    code = "import time, subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); print('up', flush=True); time.sleep(600)"
    out = supervise([sys.executable, "-c", code], dict(os.environ), tmp_path, sink, timeout_s=3.0)
    assert out.timed_out and sink.tail() == ["up"]
    assert "ran past its time cap" in describe(out, "train_gpt.py", 0, 3.0, sink.lines)


def test_output_streams_to_the_store_as_it_runs(tmp_path):
    sink = _sink(tmp_path)
    code = "import time\nfor i in range(3):\n    print(f'step:{i + 1}/3 train_loss:1.0 train_time:1ms step_avg:1.00ms', flush=True); time.sleep(0.5)\n"
    seen = []
    store = open_store(str(tmp_path / "store"))
    out = supervise([sys.executable, "-c", code], dict(os.environ), tmp_path, sink, 60, tick=lambda: seen.append(len(store.list("t/log/"))))
    assert out.returncode == 0 and not out.timed_out
    assert max(seen) >= 1 and len(store.list("t/log/")) >= 2  # chunks were in the store while it ran
    assert "".join(store.get(k).decode() for k in sorted(store.list("t/log/"))) == sink.text


@pytest.mark.parametrize("body, cls, kind", [
    ("raise ValueError('bad TTT_LR')", ErrorClass.DETERMINISTIC, "script-error"),
    ("raise RuntimeError('[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5) ran for 600000 ms')", ErrorClass.TRANSIENT, "nccl-timeout"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", ErrorClass.UNKNOWN, "crash"),
    ("raise RuntimeError('something odd')", ErrorClass.UNKNOWN, "crash"),
])
def test_a_failed_script_is_classified_by_its_log_and_keeps_its_last_50_lines(tmp_path, body, cls, kind):
    sink = _sink(tmp_path)
    code = f"for i in range(80):\n    print(f'line {{i}}')\n{body}\n"
    out = supervise([sys.executable, "-c", code], dict(os.environ), tmp_path, sink, 60)
    msg = describe(out, "train_gpt.py", 1, 60, sink.lines)
    failure = classify(ScriptError(msg))
    assert (failure.cls, failure.kind) == (cls, kind)
    assert len(failure.tail) == 50 and failure.tail[-1].startswith("rank 1: train_gpt.py")
    assert failure.message.startswith("ScriptError: rank 1: train_gpt.py")
    assert "line 79" in msg and "line 20" not in msg.splitlines()[:1]


def test_checkpoint_folder_round_trips_through_the_store_once_it_holds_still(tmp_path):
    store, layout = open_store(str(tmp_path / "store")), Layout("t")
    folder = tmp_path / "ck"
    folder.mkdir()
    sync = CheckpointSync(store, layout.script_ckpt(1, "a1", 0), folder, every_s=0.0, keep=1)
    (folder / "ckpt.pt").write_bytes(b"step 1")
    sync.scan()
    assert sync.snapshots == []  # seen once: it may still be being written
    sync.scan()
    (folder / "sub").mkdir()
    (folder / "sub" / "opt.pt").write_bytes(b"opt 2")
    (folder / "ckpt.pt").write_bytes(b"step 2!")
    sync.scan()
    sync.scan()
    assert len(sync.snapshots) == 1 and sync.snapshots[0].endswith("snap-000001.json")  # keep=1: the first is pruned
    assert len(store.list(layout.script_ckpt(1, "a1", 0) + "/blobs/")) == 2  # step 1's blob went with its snapshot
    again = tmp_path / "again"
    again.mkdir()
    plan = plan_restore(store, layout, 1, nodes=1)
    assert plan.keys == {0: sync.snapshots[0]}
    assert restore_snapshot(store, plan.keys[0], again) == sync.snapshots[0]
    assert (again / "ckpt.pt").read_bytes() == b"step 2!" and (again / "sub" / "opt.pt").read_bytes() == b"opt 2"
    assert plan_restore(store, layout, 1, nodes=2).keys == {}  # a one-node group's folder is not a 2-node group's


def snapshot(store, layout, attempt: str, node: int, files: dict[str, bytes], nodes: int = 2, step: str = r"(\d+)"):
    """One node's snapshot of its checkpoint folder holding `files`, as its CheckpointSync writes it."""
    folder = Path(store.uri).parent / "folders" / os.urandom(4).hex()
    folder.mkdir(parents=True)
    sync = CheckpointSync(store, layout.script_ckpt(1, attempt, node), folder, every_s=0.0, keep=5, nodes=nodes, step=step)
    for rel, blob in files.items():
        (folder / rel).write_bytes(blob)
    sync._n = sum("/snap-" in k for k in store.list(layout.script_ckpt(1, attempt, node)))  # this node's next snapshot
    sync.scan(), sync.scan()
    return sync.snapshots[-1]


def test_a_multi_node_group_resumes_only_from_a_step_every_snapshotting_node_has(tmp_path):
    store, layout = open_store(str(tmp_path / "store")), Layout("t")
    a300 = snapshot(store, layout, "a1", 0, {"ckpt_000300.pt": b"n0 s300"})
    b300 = snapshot(store, layout, "a1", 1, {"shard_rank1_step300.pt": b"n1 s300"})
    snapshot(store, layout, "a1", 0, {"ckpt_000400.pt": b"n0 s400"})  # node 0 got further before the death
    assert store.get_json(a300)["step"] == 300 and store.get_json(b300)["step"] == 300  # the largest number: 300, not rank 1
    plan = plan_restore(store, layout, 1, nodes=2)
    assert (plan.step, plan.keys) == (300, {0: a300, 1: b300})  # not node 0's newer step 400 beside node 1's 300
    b400 = snapshot(store, layout, "a1", 1, {"shard_rank1_step400.pt": b"n1 s400"})
    assert plan_restore(store, layout, 1, nodes=2).step == 400 and plan_restore(store, layout, 1, nodes=2).keys[1] == b400
    # a node that never snapshots (rank 0 alone writes the checkpoint) is not waited for
    other = Layout("only0")
    k = snapshot(store, other, "a1", 0, {"ckpt_9.pt": b"x"})
    assert plan_restore(store, other, 1, nodes=2).keys == {0: k}


def test_a_multi_node_group_reruns_when_its_snapshots_cannot_be_matched(tmp_path):
    store, layout = open_store(str(tmp_path / "store")), Layout("t")
    snapshot(store, layout, "a1", 0, {"latest.pt": b"n0"})
    snapshot(store, layout, "a1", 1, {"latest.pt": b"n1"})
    plan = plan_restore(store, layout, 1, nodes=2)
    assert plan.keys == {} and "name no step (train.checkpoints.step)" in plan.why
    disjoint = Layout("d")
    snapshot(store, disjoint, "a1", 0, {"step_5.pt": b"n0"})
    snapshot(store, disjoint, "a1", 1, {"step_4.pt": b"n1"})
    plan = plan_restore(store, disjoint, 1, nodes=2)
    assert plan.keys == {} and plan.why == "no step that every node has a snapshot of (node 0: [5], node 1: [4])"
    # the pattern is the user's: here the step is in a folder name, and the node's rank is not a step
    named = Layout("n")
    ka = snapshot(store, named, "a1", 0, {"model.pt": b"m"}, nodes=1, step=r"ignored(\d+)")
    assert store.get_json(ka)["step"] is None
    assert plan_restore(store, named, 1, nodes=1).keys == {0: ka}  # one node: no step needed


def test_restart_says_checkpoint_or_rerun(data_dir, tmp_path):
    with_ck = script_spec(data_dir, str(tmp_path), {"script": "x.py", "checkpoints": {}}).train
    without = script_spec(data_dir, str(tmp_path), {"script": "x.py"}).train
    assert _restart(with_ck, [], [])["mode"] == "fresh"
    assert _restart(with_ck, ["a0"], ["k"]) == {"mode": "checkpoint", "earlier_attempts": 1, "resumed_from": ["k"]}
    assert _restart(without, ["a0"], [])["why"] == "no checkpoints folder declared"
    assert _restart(with_ck, ["a0", "a1"], [])["mode"] == "rerun"
    assert _restart(with_ck, ["a0"], [], "no step that every node has a snapshot of (node 0: [5], node 1: [4])")["why"].startswith("no step")


def test_read_log_takes_the_newest_attempt(tmp_path):
    store, layout = open_store(str(tmp_path / "store")), Layout("t")
    for i, a in enumerate(["old", "new"]):
        store.put_json(f"{layout.script_log(3, a)}/start.json", {"version": 1, "time": time.time() + i})
        store.put(f"{layout.script_log(3, a, 0)}/000000.txt", f"{a} 1\n".encode())
        store.put(f"{layout.script_log(3, a, 0)}/000001.txt", f"{a} 2\n".encode())
    assert read_log(store, layout, 3) == ("new", "new 1\nnew 2\n")
    assert read_log(store, layout, 3, "old")[1] == "old 1\nold 2\n"
    assert read_log(store, layout, 4) == (None, "")


def test_outcome_of_a_clean_exit_is_no_error():
    assert describe(Outcome(0, 1.0, False), "train_gpt.py", 0, 10, []) is None
    assert Path(__file__).parent.joinpath("golf_script", "train_gpt.py").is_file()
