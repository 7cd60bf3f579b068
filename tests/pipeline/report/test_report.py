"""`pipeline report` on a real store (docs/reports.md "Reports"): three seeds evaluated by `pipeline eval`, one
of them left unfinished; the numbers are recomputed here from the raw segment files."""

from __future__ import annotations

import json
import math
import tarfile

import matplotlib.image as mpimg
import matplotlib.colors as mcolors
import numpy as np
import pytest
import yaml

from pipeline.cli import main
from pipeline.spec import ModelConfig
from pipeline.store import Layout, open_store
from tests.conftest import TINY_MODEL
from tests.workers.test_adapters import random_gpt
from workers.artifact import export_artifact
from workers.segments import load_progress

SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def campaign(data_dir, tmp_path_factory):
    """An eval-only campaign: sliding and SLOT on three seeds' artifacts, SLOT of seed 3 at one of
    its two shards (unfinished)."""
    tmp = tmp_path_factory.mktemp("report")
    arts = {}
    for s in SEEDS:
        arts[s] = tmp / f"model-{s}.ptz"
        arts[s].write_bytes(export_artifact(random_gpt(s).state_dict(), ModelConfig(**TINY_MODEL)))
    spec = {
        "name": "rep", "store": str(tmp / "store"), "results_dir": str(tmp / "results"),
        "artifacts": {s: str(p) for s, p in arts.items()},
        "data": {"shards": str(data_dir), "tokenizer": str(data_dir / "tokenizer.model"), "val_tokens": 700},
        "evals": [
            {"name": "sw", "seq_len": 64, "stride": 16, "batch_seqs": 4, "shards": 2},
            {"name": "slot", "seq_len": 64, "stride": 16, "batch_seqs": 4, "shards": 2, "passes": [{"kind": "slot", "steps": 2}]},
        ],
        "checkpoint_every_s": 0.0001,
        "cluster": {"accelerator": "cpu", "cpu_threads": 1},
    }
    f = tmp / "c.yaml"
    f.write_text(yaml.safe_dump(spec))
    for s in SEEDS:
        assert main(["eval", str(f), "--seed", str(s), "--recipe", "sw"]) == 0
        assert main(["eval", str(f), "--seed", str(s), "--recipe", "slot"] + (["--shard", "0"] if s == 3 else [])) == 0
    return f, tmp


def _reported(tmp, *args):
    assert main(["report", str(tmp / "c.yaml"), *args]) == 0
    out = tmp / "results" / "rep"
    return out, json.loads((out / "report.json").read_text())


def test_report_numbers_are_the_per_batch_records_summed(campaign):
    f, tmp = campaign
    out, rep = _reported(tmp, "--baseline", "3.5,3.6,3.55")
    store, layout = open_store(str(tmp / "store")), Layout("rep")
    sw = rep["recipes"]["sw"]
    values = []
    for row in sw["seeds"]:
        recs = load_progress(store, layout.eval_dir(row["seed"], "sw")).records
        nll = math.fsum(recs[b].nll for b in sorted(recs))  # independently of the merge's float order
        nbytes = sum(r.bytes for r in recs.values())
        tokens = sum(r.tokens for r in recs.values())
        assert row["state"] == "DONE" and row["tokens"] == tokens and row["bytes"] == nbytes
        assert row["val_bpb"] == pytest.approx(nll / math.log(2) / nbytes, rel=1e-12)
        assert row["val_loss"] == pytest.approx(nll / tokens, rel=1e-12)
        assert row["windows"] > 0 and row["eval_s"] > 0 and row["artifact_bytes"] > 0 and row["devices"] == ["cpu"]
        values.append(row["val_bpb"])
    assert sw["val_bpb"]["mean"] == pytest.approx(np.mean(values), rel=1e-14)
    assert sw["val_bpb"]["std_ddof0"] == pytest.approx(np.std(values, ddof=0), rel=1e-10)
    assert sw["val_bpb"]["std_ddof1"] == pytest.approx(np.std(values, ddof=1), rel=1e-10)
    from scipy import stats as scipy_stats

    want = scipy_stats.ttest_ind(values, [3.5, 3.6, 3.55], equal_var=False, alternative="less").pvalue
    assert sw["baseline"]["test"]["p_value"] == pytest.approx(want, rel=1e-9)
    # the trajectory ends at the final number, on the windows' basis
    last = sw["trajectory"][0]["points"][-1]
    assert sw["trajectory"][0]["basis"] == "windows" and last[0] == pytest.approx(1.0)
    assert last[1] == pytest.approx(sw["seeds"][0]["val_bpb"], rel=1e-12)
    md = (out / "report.md").read_text()
    assert f"{values[0]:.6f}" in md and "std (ddof=0)" in md and "std (ddof=1)" in md


def test_an_unfinished_eval_is_an_estimate_never_a_bare_number(campaign):
    """Seed 3's SLOT has a few of its batches done: fewer than MIN_INTERVAL_BATCHES, so the report
    shows the running value, % done and why there is no interval."""
    from pipeline.progress.estimators import MIN_INTERVAL_BATCHES

    f, tmp = campaign
    out, rep = _reported(tmp)
    slot = rep["recipes"]["slot"]
    row3 = next(r for r in slot["seeds"] if r["seed"] == 3)
    assert row3["state"] == "PENDING" and row3["val_bpb"] is None
    e = row3["estimate"]
    assert 0 < row3["done"] < 1 and 0 < e["batches_done"] < MIN_INTERVAL_BATCHES and e["half_width"] is None
    assert slot["val_bpb"]["n"] == 2 and slot["with_estimates"]["n"] == 3 and not slot["complete"]
    md = (out / "report.md").read_text()
    n = e["batches_done"]
    assert f"~{e['value']:.6f} at {row3['done']:.1%}, {n} batch{'es' if n != 1 else ''}: no interval below {MIN_INTERVAL_BATCHES} (PENDING)" in md
    assert f"| {e['value']:.6f} |" not in md
    assert "ESTIMATE" in md and "(n=2 of 3)" in md


def test_an_estimate_with_enough_batches_shows_its_interval():
    from types import SimpleNamespace

    from pipeline.report.markdown import bpb_cell

    e = {"value": 1.25, "half_width": 0.01, "low": 1.24, "high": 1.26, "batches_done": 40, "batches": 100, "sample": True}
    assert bpb_cell(SimpleNamespace(val_bpb=None, estimate=e, done=0.4, state="RUNNING", error=None)) == "~1.250000 [1.240000, 1.260000] at 40.0% (RUNNING)"
    prefix = {**e, "half_width": None, "sample": False}
    assert "val-order prefix, no interval" in bpb_cell(SimpleNamespace(val_bpb=None, estimate=prefix, done=0.4, state="RUNNING", error=None))


def test_submission_json_has_the_records_fields_and_lists_what_to_fill(campaign):
    f, tmp = campaign
    out, rep = _reported(tmp, "--recipe", "sw", "--bytes-code", "47000")
    sub = json.loads((out / "submission.json").read_text())
    for k in ("name", "blurb", "date", "val_loss", "val_bpb", "bytes_total", "bytes_code", "seeds", "seed_results", "val_bpb_std", "hardware"):
        assert k in sub
    assert sub["val_bpb"] == rep["recipes"]["sw"]["val_bpb"]["mean"]
    assert sub["val_bpb_std"] == rep["recipes"]["sw"]["val_bpb"]["std_ddof0"]  # as the records publish it
    assert sub["bytes_total"] == sub["bytes_model"] + 47000 and sub["seeds"] == list(SEEDS)
    assert set(sub["pipeline"]["to_fill"]) == {"name", "blurb", "author", "github_id"}
    # the unfinished recipe: its means are left empty, never filled with an estimate
    _reported(tmp, "--recipe", "slot")
    sub = json.loads((out / "submission.json").read_text())
    assert sub["val_bpb"] is None and "val_bpb" in sub["pipeline"]["to_fill"]
    assert sub["seed_results"]["3"]["status"] == "PENDING" and "estimate" in sub["seed_results"]["3"]


def _has_color(img: np.ndarray, color: str, tol: float = 0.03) -> bool:
    rgb = np.array(mcolors.to_rgb(color))
    return bool((np.abs(img[..., :3] - rgb).max(axis=-1) < tol).any())


def test_the_pngs_are_real_pictures_of_the_data(campaign):
    f, tmp = campaign
    out, rep = _reported(tmp)
    md = (out / "report.md").read_text()
    cycle = [c["color"] for c in __import__("matplotlib").rcParams["axes.prop_cycle"]]
    for name in ("trajectory", "seeds", "progress"):
        assert f"]({name}.png)" in md
        img = mpimg.imread(out / f"{name}.png")
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        assert img[..., :3].std() > 0.02  # not blank, not one colour
    traj, seeds = mpimg.imread(out / "trajectory.png"), mpimg.imread(out / "seeds.png")
    for i, _ in enumerate(SEEDS):  # every seed's line and marker is drawn in its colour
        assert _has_color(traj, cycle[i]) and _has_color(seeds, cycle[i])
    assert _has_color(mpimg.imread(out / "progress.png"), "tab:blue")


def test_bundle_holds_what_a_maintainer_needs(campaign):
    f, tmp = campaign
    assert main(["report", str(f), "--bundle"]) == 0
    path = tmp / "results" / "rep" / "bundle-rep.tar.gz"
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
        root = "rep-bundle"
        for must in ("README.txt", "report.md", "report.json", "submission.json", "campaign-file.yaml", "store/campaign.json",
                     "store/seeds/1/train/manifest.json", "store/seeds/1/eval/sw/result.json", "store/seeds/1/eval/sw/shard-0/done.json",
                     "here/pip-freeze.txt"):
            assert f"{root}/{must}" in names, must
        packages = [n for n in names if n.startswith(f"{root}/store/env/packages-")]
        assert packages and b"torch==" in tar.extractfile(packages[0]).read()
        done = json.loads(tar.extractfile(f"{root}/store/seeds/1/eval/sw/shard-0/done.json").read())
    prov = done["provenance"]
    assert prov["torch"] and prov["python"] and prov["code_sha256"] and prov["packages_key"].endswith(packages[0].rsplit("/", 1)[1])


def test_bad_input_is_one_line_and_writes_nothing(campaign, tmp_path, capsys):
    f, tmp = campaign
    out = tmp_path / "r"
    assert main(["report", str(f), "--results-dir", str(out), "--recipe", "nope"]) == 2
    assert main(["report", str(f), "--results-dir", str(out), "--baseline", "1.1,abc"]) == 2
    assert main(["report", str(f), "--results-dir", str(out), "--baseline", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "b.json").write_text("{}")
    assert main(["report", str(f), "--results-dir", str(out), "--baseline", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err)
    assert "--recipe nope" in err[0] and "'abc' is not a number" in err[1] and "no such file" in err[2] and "b.json" in err[3]
    assert not out.exists()


def test_a_report_json_is_a_baseline_for_the_next_campaign(campaign, tmp_path):
    f, tmp = campaign
    out, rep = _reported(tmp)
    base = tmp_path / "base.json"
    base.write_text((out / "report.json").read_text())
    assert main(["report", str(f), "--results-dir", str(tmp_path / "r2"), "--baseline", str(base)]) == 0
    again = json.loads((tmp_path / "r2" / "rep" / "report.json").read_text())
    test = again["recipes"]["sw"]["baseline"]["test"]
    assert test["delta"] == pytest.approx(0.0, abs=1e-15) and test["p_value"] == pytest.approx(0.5)
