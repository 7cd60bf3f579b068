from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[3]


def minimal(**over):
    d = {"name": "x", "seeds": [1], "data": {"shards": "d", "tokenizer": "d/t.model"}}
    d.update(over)
    return d


def test_examples_validate():
    demo = load_spec(ROOT / "jobs/demo.yaml")
    assert demo.seeds == [1337, 1338, 1339] and demo.cluster.accelerator == "cpu"
    golf = load_spec(ROOT / "jobs/golf_8xh100.yaml")
    assert golf.seeds == [1337, 1338, 1339]
    assert golf.train.world_size == 8 and golf.train.max_wallclock_s == 600
    assert (golf.model.num_layers, golf.model.model_dim, golf.model.vocab_size) == (9, 512, 1024)
    (ev,) = golf.evals
    assert (ev.stride, ev.seq_len, ev.batch_seqs, ev.window_filter) == (64, 1024, 32, "legacy")
    assert (ev.scorer.kind, ev.scorer.lr, ev.scorer.lr_min, ev.scorer.steps) == ("slot", 0.1, 0.001, 100)
    kinds = [e.kind for e in load_spec(ROOT / "jobs/golf_ttt_slot.yaml").evals]
    assert kinds == ["sliding", "slot", "slot_per_sample", "ttt+sliding", "ttt+sliding", "ttt+slot"]
    assert {e.kind for e in demo.evals} == {"sliding", "slot", "slot_per_sample", "ttt+sliding", "ttt+slot"}


def test_golf_model_is_baseline_size():
    from workers.model import GPT, count_parameters

    n = count_parameters(GPT(load_spec(ROOT / "jobs/golf_8xh100.yaml").model))
    assert 16_000_000 < n < 18_000_000


@pytest.mark.parametrize(
    "over, field",
    [
        ({"train": {"batch_tokenz": 4}}, "train.batch_tokenz: unknown key"),
        ({"sedes": [1]}, "sedes: unknown key"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"seeds": []}, "seeds"),
        ({"model": {"model_dim": 100, "num_heads": 8}}, "model"),
        ({"model": {"num_heads": 8, "num_kv_heads": 3}}, "model"),
        ({"train": {"world_size": 0}}, "train.world_size"),
        ({"train": {"batch_tokens": 1000}}, "train: Value error, batch_tokens"),
        ({"evals": [{"name": "a", "seq_len": 64, "stride": 128}]}, "evals.0"),
        ({"evals": [{"name": "a"}, {"name": "a"}]}, "duplicate recipe names"),
        ({"evals": [{"name": "a", "passes": [{"kind": "bogus"}]}]}, "evals.0.passes.0"),
        ({"evals": [{"name": "a", "passes": [{"kind": "slot", "stepz": 1}]}]}, "evals.0.passes.0.slot.stepz: unknown key"),
        ({"evals": [{"name": "a", "passes": [{"kind": "slot"}, {"kind": "ttt"}]}]}, "the last pass must score"),
        ({"evals": [{"name": "a", "passes": [{"kind": "slot"}, {"kind": "slot"}]}]}, "at most one ttt pass"),
        ({"evals": [{"name": "a", "passes": []}]}, "evals.0.passes"),
        ({"evals": [{"name": "a", "passes": [{"kind": "ttt", "optimizer": "adam"}, {"kind": "sliding"}]}]}, "optimizer"),
        ({"evals": [{"name": "Bad Name"}]}, "evals.0.name"),
        ({"name": "../escape"}, "name"),
        ({"checkpoint_every_s": -1}, "checkpoint_every_s"),
    ],
)
def test_bad_specs_name_the_field(over, field):
    with pytest.raises(SpecError) as e:
        parse_spec(minimal(**over), "camp.yaml")
    msg = str(e.value)
    assert msg.startswith("camp.yaml: ") and field in msg and "\n" not in msg


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="bad.yaml: line"):
        load_spec(bad)
    with pytest.raises(SpecError, match="nope.yaml: cannot read"):
        load_spec(tmp_path / "nope.yaml")
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(lst)


def test_cli_validate_one_line_error(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\nseeds: [1]\ndata: {shards: d, tokenizer: t}\ntrain: {warmup: 3}\n")
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "c.yaml" in err and "train.warmup: unknown key" in err
    assert main(["validate", str(ROOT / "jobs/demo.yaml")]) == 0


def test_fingerprint_ignores_where_it_runs():
    a = parse_spec(minimal())
    b = parse_spec(minimal(store="s3://bucket/p", cluster={"accelerator": "cpu"}, checkpoint_every_s=5))
    c = parse_spec(minimal(model={"num_layers": 3}))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
