"""Exactness under kills: SIGKILL the eval process again and again, restart it each time, and the
final numbers equal an uninterrupted run's bit for bit (docs/design.md §6)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import yaml

from pipeline.store import Layout, open_store
from tests.conftest import make_spec
from tests.workers.dir_events import DirEvents
from tests.workers.helpers import commit_random_model
from workers.evaluate import run_eval

RECIPES = {
    "sliding": [{"kind": "sliding"}],
    "slot": [{"kind": "slot", "steps": 6}],
    "ttt": [{"kind": "ttt", "chunk_tokens": 500, "epochs": 2, "lr": 0.01, "batch_seqs": 4}, {"kind": "sliding"}],
    # a 2-process group (what ttt.gpus: 2 runs as), Muon: each rank's own momentum is in the state
    "ttt-2gpus": [
        {"kind": "ttt", "chunk_tokens": 500, "epochs": 2, "lr": 0.002, "batch_seqs": 4, "optimizer": "muon", "gpus": 2},
        {"kind": "sliding"},
    ],
}
MIN_KILLS = 3  # each restart resumes a resumed shard; one kill mid-write, and (TTT) one with a saved state
MAX_ATTEMPTS = 60


def _spec(data_dir, store, name):
    ev = {"name": name, "seq_len": 64, "stride": 16, "batch_seqs": 4, "passes": RECIPES[name]}
    return make_spec(data_dir, store, evals=[ev], data={"val_tokens": 5000}, checkpoint_every_s=0.0001)


def _tmp_files(shard_dir: Path) -> set[str]:
    return {p.name for p in shard_dir.glob(".tmp-*")} if shard_dir.is_dir() else set()


def _count(shard_dir: Path, prefix: str) -> int:
    return sum(1 for _ in shard_dir.glob(f"{prefix}*")) if shard_dir.is_dir() else 0


def _wait_group_gone(pgid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    raise AssertionError(f"process group {pgid} still alive 10 s after SIGKILL")


@pytest.mark.parametrize("name", list(RECIPES))
def test_sigkill_resume_is_bit_identical(data_dir, tmp_path, name):
    rng = random.Random(f"kill-{name}")
    reference = _spec(data_dir, str(tmp_path / "ref"), name)
    commit_random_model(reference, 1)
    expected = run_eval(reference, 1, name, reference.store)

    spec = _spec(data_dir, str(tmp_path / "killed"), name)
    commit_random_model(spec, 1)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    shard_dir = Path(spec.store) / Layout(spec.name).shard_dir(1, name, 0)
    result_key = Layout(spec.name).result(1, name)
    cmd = [sys.executable, "-m", "pipeline", "eval", str(spec_file), "--seed", "1", "--recipe", name]

    kills = flush_kills = kills_with_state = 0
    for attempt in range(MAX_ATTEMPTS):
        # enough kills, one caught mid-write, and for TTT one after a chunk-boundary state was saved
        # (kill moments are random: stopping at MIN_KILLS alone could miss the state on a fast box)
        done = kills >= MIN_KILLS and flush_kills >= 1 and (kills_with_state >= 1 or not name.startswith("ttt"))
        # its own process group, so a kill takes the eval and every rank it spawned, as a dying pod does
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2], start_new_session=True
        )
        if done:
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, out.decode()
            break
        # Wait for this attempt to make progress, then kill it: at a random moment, or (every other
        # attempt) the instant a write is caught half done (its temp file exists).
        # The kernel says what appears in the shard folder (a blocking wait: polling it took a core).
        hunt_flush = attempt % 2 == 1
        deadline = time.monotonic() + 120
        killed_in_flush = False
        while not shard_dir.is_dir() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the first attempt creates it
        stale = _tmp_files(shard_dir)
        with DirEvents(shard_dir) if shard_dir.is_dir() else nullcontext() as events:
            written = _count(shard_dir, "seg-")
            target = written + rng.randint(1, 8)
            while events is not None and proc.poll() is None and time.monotonic() < deadline:
                names = list(events.new(timeout=0.05))
                if hunt_flush and any(n.startswith(".tmp-") for n in names):
                    killed_in_flush = True
                    break
                written += sum(n.startswith("seg-") for n in names)
                if not hunt_flush and written >= target:
                    time.sleep(rng.uniform(0, 0.02))
                    break
        if proc.poll() is not None:  # it finished before the kill: too little work left to kill
            assert proc.returncode == 0, proc.stdout.read().decode()
            pytest.fail(f"eval finished after {kills} kills ({flush_kills} during a write)")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait_group_gone(proc.pid)
        kills += 1
        kills_with_state += _count(shard_dir, "state-") > 0
        flush_kills += killed_in_flush or bool(_tmp_files(shard_dir) - stale)
    else:
        pytest.fail(f"only {kills} kills ({flush_kills} during a write) in {MAX_ATTEMPTS} attempts")

    got = open_store(spec.store).get_json(result_key)
    print(f"{name}: {kills} kills, {flush_kills} during a write, {kills_with_state} with a TTT state, {got['run']}")
    assert got["run"]["resumed_batches"] > 0
    if name.startswith("ttt"):
        assert kills_with_state > 0  # some restarts resumed from a saved chunk-boundary state
    for k in ("val_bpb", "val_loss", "nll_sum", "tokens", "bytes", "windows", "batches"):
        assert got[k] == expected[k], k
