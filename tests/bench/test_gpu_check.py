"""bench/gpu_check.py's CPU side: its arguments, its table, its projection, and its refusal on a
machine without a GPU (one line, exit 1, nothing written)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up
spec.loader.exec_module(gpu_check)


def test_arguments_default_and_skip():
    args = gpu_check.parse_args([])
    assert args.out == Path("gpu-check") and args.batches == 8 and args.tasks == 0 and args.skip == set()
    assert gpu_check.parse_args(["--skip", "nccl, ray"]).skip == {"nccl", "ray"}


@pytest.mark.parametrize("argv, says", [
    (["--skip", "nccl,bogus"], "--skip: unknown check(s) bogus"),
    (["--batches", "0"], "--batches: must be at least 1"),
    (["--tasks", "-1"], "--tasks: must not be negative"),
])
def test_bad_arguments_name_the_flag(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_projection_arithmetic():
    # the seeds' figure: 969,088 windows in 50 min is 323.0 windows/s
    assert gpu_check.projected_minutes(969_088 / 3000) == pytest.approx(50.0)
    assert gpu_check.projected_minutes(100.0, windows=6000) == pytest.approx(1.0)
    row = gpu_check.speed_row("baseline 9x512 (17.1 M)", "slot-100", windows=9690, seconds=1.0)
    assert "9,690 windows/s → 1.7 min for 969,088 windows" in row.result and "÷ 30.0" in row.result
    assert "÷" not in gpu_check.speed_row("s", "sliding", 9690, 1.0).result and row.ok is None


def test_table_aligns_and_marks():
    rows = [gpu_check.Row("versions", "torch 2"), gpu_check.Row("a longer check", "fine", True), gpu_check.Row("x", "bad", False)]
    lines = gpu_check.render(rows).splitlines()
    assert lines[0].startswith("check") and len(lines) == 5
    assert lines[3].split()[-2:] == ["ok", "fine"] and lines[4].split()[1:] == ["FAIL", "bad"]
    assert lines[2].index("torch") == lines[3].index("fine")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_refuses_a_machine_without_gpu_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "no CUDA GPU" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_speed_rows_context_scores_batches_of_the_engine_on_cpu():
    """The speed rows time workers/evaluate.score_batch over random tokens: the same context on CPU, tiny."""
    import torch

    from workers.evaluate import score_batch

    tiny = {"vocab_size": 64, "num_layers": 2, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2, "mlp_mult": 2}
    ctx = gpu_check.eval_context(tiny, gpu_check.RECIPES["sliding"], batches=2, device=torch.device("cpu"))
    assert ctx.num_batches >= 3
    rec = score_batch(ctx, 1)
    assert rec.tokens == 32 * 64 and rec.bytes == rec.tokens and rec.nll > 0  # one byte per token, every window scores its last 64
