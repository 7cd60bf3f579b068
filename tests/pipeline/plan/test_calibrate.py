"""`pipeline plan --calibrate` on a tiny campaign (the real driver, a real local Ray instance), then
a real run of it and `--from STORE/NAME --compare`, whose table `pipeline report` includes."""

from __future__ import annotations

import json

import yaml

from pipeline.cli import main
from pipeline.run.driver import Driver
from pipeline.plan.compare import compare_path
from pipeline.plan.throughput import load_table, rates_for, table_path
from pipeline.report.cli import write_report
from pipeline.store import open_store
from tests.conftest import make_spec
from tests.pipeline.plan.test_cli import TTT


def test_calibrate_then_compare_with_a_run(data_dir, tmp_path, ray_local):
    # one seed on a 1-worker group: the figures per step, per batch and per unit start are what is
    # calibrated and compared (a second seed or rank measures the same again; the k-GPU TTT unit stays)
    spec = make_spec(
        data_dir, str(tmp_path / "store"), evals=[{"name": "sw", "seq_len": 64, "stride": 32, "batch_seqs": 8}, TTT],
        seeds=[1], train={"world_size": 1},
        results_dir=str(tmp_path / "results"), cluster={"pricing": {"gpu_type": "H100-equivalent", "usd_per_gpu_hour": 3.0}},
    )
    spec_file = tmp_path / "camp.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))

    # what is checked is read from the files it writes: a Ray instance in this process may hold stdout
    assert main(["plan", str(spec_file), "--calibrate", "--pods", "1x4xH100", "--json"]) == 0
    table = load_table(table_path(spec_file))
    rates = rates_for(table, "H100")
    assert table.source == "calibrate" and table.campaign == "t"
    assert rates.train is not None and rates.train.step_s > 0 and set(rates.recipes) == {"sw", "ttt"}
    assert not (tmp_path / "store").exists()  # the calibration's campaign lived in a temporary store

    report = Driver(spec, log=lambda m: None).run()
    assert not report.failed
    assert main(["plan", str(spec_file), "--from", f"{tmp_path / 'store'}/t", "--compare", "--json"]) == 0
    cmp = json.loads(compare_path(spec).read_text())
    assert cmp["mix"] == "1x4xH100" and cmp["makespan"]["measured_s"] > 0 and cmp["usd"]["measured"] > 0
    assert [r["recipe"] for r in cmp["recipes"]] == ["train", "sw", "ttt"]
    assert all(r["measured_s"] > 0 and r["predicted_s"] > 0 for r in cmp["recipes"])
    assert {(r["seed"], r["recipe"]) for r in cmp["by_seed_recipe"]} == {(1, r) for r in ("train", "sw", "ttt")}

    files = write_report(spec, open_store(spec.store), tmp_path / "report")
    md = files.report_md.read_text()
    assert "## Plan vs measured" in md and "| makespan |" in md and "| ttt |" in md
    assert json.loads(files.report_json.read_text())["plan_compare"]["run"] == cmp["run"]
