"""`pipeline plan` on good and bad input: a bad input is one line, exit 2, and nothing written."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.cli import main
from pipeline.plan.throughput import table_path, write_table
from tests.conftest import make_spec
from tests.pipeline.plan.test_simulate import TABLE

TTT = {"name": "ttt", "seq_len": 64, "stride": 32, "batch_seqs": 8,
       "passes": [{"kind": "ttt", "chunk_tokens": 1024, "epochs": 1, "gpus": 2}, {"kind": "sliding"}]}


@pytest.fixture
def spec_file(data_dir, tmp_path):
    spec = make_spec(data_dir, str(tmp_path / "store"), evals=[{"name": "sw", "seq_len": 64, "stride": 32, "batch_seqs": 8}, TTT],
                     cluster={"pricing": {"gpu_type": "H100-equivalent", "usd_per_gpu_hour": 3.0}})
    path = tmp_path / "camp.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    write_table(TABLE, table_path(path))
    return path


def files(root) -> set:
    return {p for p in root.rglob("*")}


def test_plan_marks_the_cheapest_meeting_the_deadline(spec_file, capsys):
    assert main(["plan", str(spec_file), "--pods", "1x2xH100", "--pods", "1x4xH100", "--pods", "2x4xH100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {m["mix"]: m for m in out["mixes"]}
    assert set(rows) == {"1x2xH100", "1x4xH100", "2x4xH100"}
    assert rows["1x2xH100"]["makespan_h"] > rows["1x4xH100"]["makespan_h"] >= rows["2x4xH100"]["makespan_h"]
    assert out["best"] == min(rows.values(), key=lambda m: m["usd"])["mix"]
    assert all(abs(m["usd"] - m["useful_usd"] - m["idle_usd"]) < 1e-9 for m in rows.values())
    assert rows["1x4xH100"]["prices"] == ["H100 $3/GPU-h (the spec's cluster.pricing)"]
    fast = rows["2x4xH100"]["makespan_h"]
    assert main(["plan", str(spec_file), "--pods", "1x2xH100", "--pods", "2x4xH100", "--deadline", str(fast * 1.01), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["best"] == "2x4xH100"


@pytest.mark.parametrize("argv, says", [
    (["--pods", "1x4xB300"], "unknown GPU type 'B300'"),
    (["--pods", "1x4xA100"], "no throughput figure for A100: train, sw, ttt"),
    (["--pods", "4x1xH100"], "and eval ttt (e.g. eval/1/ttt/0) needs 2 GPUs; the largest node has 1 of the cluster's 4"),
    (["--pods", "1x1xH100"], "train (e.g. train/1) needs 2 GPUs; the cluster has 1"),
    (["--pods", "1x4xH100", "--pods", "1x2xH100", "--deadline", "0.00001"], "no mix meets it; the fastest is 1x4xH100"),
    (["--pods", "1x4xH100", "--budget", "0.000001"], "--budget 1e-06 USD: no mix meets it; the cheapest is 1x4xH100"),
    (["--pods", "8xH100"], "'8xH100' is not COUNTxGPUSxTYPE"),
    (["--compare"], "--compare: needs --from STORE/NAME"),
])
def test_bad_input_is_one_line(spec_file, capsys, argv, says):
    before = files(spec_file.parent)
    assert main(["plan", str(spec_file), *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert files(spec_file.parent) == before


def test_corrupt_table(spec_file, capsys):
    table = table_path(spec_file)
    for text, says in (("{not json", "not a throughput table"), (json.dumps({**TABLE.model_dump(), "version": 7}), "version: Input should be 1")):
        table.write_text(text)
        before = files(spec_file.parent)
        assert main(["plan", str(spec_file), "--pods", "1x4xH100"]) == 2
        err = capsys.readouterr().err
        assert str(table) in err and says in err and err.count("\n") == 1
        assert files(spec_file.parent) == before
    table.unlink()
    assert main(["plan", str(spec_file)]) == 2
    assert "no throughput table (`pipeline plan SPEC --calibrate` measures one)" in capsys.readouterr().err
