"""Early stop, budget, status and cost on a real local Ray instance and a real store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.cli import main
from pipeline.run.driver import Driver
from pipeline.records.ledger import Ledger
from pipeline.progress.estimators import Batches
from pipeline.progress.stopping import EarlyStops, decide, estimate_key
from pipeline.store import Layout, open_store
from tests.conftest import make_spec
from tests.workers.helpers import commit_random_model
from workers.evaluate import run_eval
from workers.segments import Record, encode_segment

ROOT = Path(__file__).resolve().parents[3]
PRICING = {"gpu_type": "H100", "usd_per_gpu_hour": 3.6}
# ~370 batches of SLOT-60: seconds of work per shard after the rule holds (at 30 batches), so the
# driver (which looks at least once a second) stops the eval while its shards run
SLOW = {"name": "slot", "seq_len": 64, "stride": 16, "batch_seqs": 1, "passes": [{"kind": "slot", "steps": 60}]}


def cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh process: no Ray in it, only the store."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def write(path: Path, spec) -> Path:
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return path


def test_early_stop_ends_estimated_then_resumes_to_the_full_number(ray_local, data_dir, tmp_path):
    over = {"seeds": [1], "data": {"val_tokens": 6000}, "cluster": {"pricing": PRICING}}
    ref = make_spec(data_dir, str(tmp_path / "ref"), evals=[SLOW], **over)
    commit_random_model(ref, 1)
    full = run_eval(ref, 1, "slot", ref.store, shards=4)

    rule = {"half_width": 5.0, "min_batches": 30}  # holds as soon as 30 batches are in
    spec = make_spec(data_dir, str(tmp_path / "store"), evals=[{**SLOW, "stop_when": rule}], **over)
    commit_random_model(spec, 1)
    log: list[str] = []
    report = Driver(spec, log=log.append).run()
    assert list(report.estimated) == ["1/slot"] and not report.failed, log
    store, layout = open_store(spec.store), Layout("t")
    est = store.get_json(estimate_key(layout, 1, spec.evals[0]))
    stopped = [e for e in Ledger(store, layout, "x").events() if e.get("state") == "ESTIMATED" and e.get("attempt")]
    assert stopped, "no running shard was stopped by the rule"  # they were cancelled mid-eval
    assert not store.exists(layout.result(1, "slot"))  # an estimate is never the finished number
    assert 30 <= est["val_bpb"]["batches_done"] < full["batches"] and est["val_bpb"]["half_width"] <= 5.0

    # the same rule again: nothing to do
    again = Driver(spec, log=lambda _: None).run()
    assert not again.done and list(again.estimated) == ["1/slot"]

    # status and cost from a copy of the store, in another directory, by a process without Ray
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "store", copy)
    out = cli("status", f"{copy}/t", "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    (ev,) = st["evals"]
    assert ev["state"] == "ESTIMATED" and ev["val_bpb"] is None
    assert ev["estimate"]["half_width"] > 0 and 0 < ev["done"] < 1
    assert st["spent_usd"] > 0 and st["driver"] is None
    table = cli("status", f"{copy}/t")
    assert table.returncode == 0 and "ESTIMATED" in table.stdout and "±" in table.stdout, table.stdout + table.stderr
    cost = cli("cost", f"{copy}/t", "--json")
    assert cost.returncode == 0, cost.stderr
    c = json.loads(cost.stdout)
    assert c["by_seed_recipe"]["1/slot"]["usd"] > 0 and c["gpu_types"] == ["H100"]
    assert c["idle_usd"] is not None  # the driver recorded the cluster

    # without the rule the eval resumes from its records to the uninterrupted number
    spec_full = make_spec(data_dir, spec.store, evals=[SLOW], **over)
    done = Driver(spec_full, log=lambda _: None).run()
    assert not done.failed and not done.estimated
    got = store.get_json(layout.result(1, "slot"))
    for k in ("val_bpb", "nll_sum", "tokens", "bytes"):
        assert got[k] == full[k], k
    assert got["run"]["resumed_batches"] >= 30  # the estimate's batches were not redone


def test_worse_than_stops_on_paired_records(tmp_path):
    """EarlyStops reads both recipes' records from the store and stops the one shown worse."""
    from tests.conftest import TINY_MODEL

    spec_data = {
        "name": "t", "store": str(tmp_path / "s"), "seeds": [7], "data": {"shards": "/x", "tokenizer": "/x/t.model"},
        "model": TINY_MODEL,
        "evals": [
            {"name": "good", "passes": [{"kind": "slot", "steps": 8}]},
            {"name": "bad", "stop_when": {"worse_than": "good"}},
        ],
    }
    from pipeline.spec import parse_spec

    spec = parse_spec(spec_data)
    store, layout = open_store(spec.store), Layout("t")
    N = 400
    for name, shift in (("good", 0.0), ("bad", 0.05)):
        store.put_json(layout.plan(7, name), {"version": 1, "recipe": name, "windows": N, "batches": N, "shards": [list(range(N))]})
        recs = [Record(b, (1.0 + shift + 0.2 * ((b * 37) % 11) / 11) * 1000 * 0.6931471805599453, 100, 1000) for b in range(120)]
        store.put(layout.segment(7, name, 0, "a1", 0), encode_segment(recs))
    stops = EarlyStops(spec, store, every_s=0)
    (seed, name, decision), = stops.check({(7, "good"), (7, "bad")})
    assert (seed, name) == (7, "bad") and decision.vs.low > 0
    assert store.exists(estimate_key(layout, 7, spec.eval_recipe("bad")))
    # too few batches to decide: no stop
    small = decide(spec.eval_recipe("bad").stop_when, Batches.of(recs[:10]), N, (Batches.of(recs[:10]), Batches.of(recs[:10])))
    assert not small.stop


def test_budget_starts_nothing_it_cannot_pay_for_then_a_larger_one_runs(ray_local, data_dir, tmp_path, capsys, monkeypatch):
    # a 1-worker training: what is proven is the budget, not the group
    over = {"seeds": [1], "cluster": {"pricing": PRICING}, "results_dir": str(tmp_path / "results"), "train": {"world_size": 1}}
    # a training is projected at train.max_wallclock_s (120 s) on its 1 GPU = $0.12 at $3.6/GPU-hour
    tight = make_spec(data_dir, str(tmp_path / "store"), budget_usd=0.1, **over)
    f = write(tmp_path / "c.yaml", tight)
    assert main(["run", str(f)]) == 1
    out = capsys.readouterr().out
    assert "budget $0.10" in out and "would pass it" in out
    store, layout = open_store(tight.store), Layout("t")
    assert not store.exists(layout.manifest(1))
    roomy = make_spec(data_dir, tight.store, budget_usd=100.0, **over)
    monkeypatch.setattr("pipeline.progress.live.LOG_EVERY_S", 0.5)  # stdout is no terminal: progress lines
    assert main(["run", str(write(tmp_path / "c2.yaml", roomy))]) == 0
    assert store.exists(layout.result(1, "sw"))
    out = capsys.readouterr().out
    assert "cost (GPU-hours × price)" in out  # the run ends with its cost table
    assert "progress " in out and "of eval batches" in out

    # in a terminal: bars, one for the campaign with its dollars
    import io

    from rich.console import Console

    from pipeline.progress.live import LiveProgress

    screen = io.StringIO()
    live = LiveProgress(roomy, store, Console(file=screen, force_terminal=True, width=150))
    live.start("no-such-run")
    live._draw(live.snapshot())
    live.stop()
    assert "campaign" in screen.getvalue() and "spent" in screen.getvalue()
