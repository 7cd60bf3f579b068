"""Eval-only campaigns (`artifacts:`), legality labels and the fingerprint of the fields added for
the records' recipes (docs/recipes.md: Eval-only campaigns, Recipe variants, Legality)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.records.campaign import CampaignChanged, check_campaign
from pipeline.cli import main
from pipeline.spec import SpecError, load_spec, parse_spec
from pipeline.store import Layout, open_store
from tests.conftest import make_spec
from tests.workers import toy_adapter
from tests.workers.helpers import baseline_artifact
from tests.workers.test_adapters import random_gpt

JOB = Path(__file__).parents[2] / "jobs" / "eval_only_baseline.yaml"


def small(recipe: dict) -> dict:
    """A README-table recipe at test size: same kinds and variant fields, tiny numbers."""
    passes = []
    for p in recipe.get("passes", [{"kind": "sliding"}]):
        p = dict(p)
        if "steps" in p:
            p["steps"] = 2
        if p["kind"] == "ttt":
            p.update(chunk_tokens=300, epochs=1, batch_seqs=4)
        passes.append(p)
    r = {**recipe, "seq_len": 64, "stride": 16, "batch_seqs": 8, "passes": passes}
    if "rank_split" in r:
        r["rank_split"] = 2
    return r


def eval_only(data_dir, tmp_path, artifact, name="eo", **top) -> dict:
    return {
        "name": name,
        "store": str(tmp_path / "store"),
        "results_dir": str(tmp_path / "results"),
        "artifacts": {1: str(artifact)},
        "data": {"shards": str(data_dir), "tokenizer": str(data_dir / "tokenizer.model"), "val_tokens": 700},
        "evals": [small(e) for e in yaml.safe_load(JOB.read_text())["evals"]],
        "checkpoint_every_s": 0.0001,
        "cluster": {"accelerator": "cpu", "cpu_threads": 1, "local": {"num_cpus": 4, "num_gpus": 4}},
        **top,
    }


def write(tmp_path, d) -> Path:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(d))
    return f


def test_eval_only_spec_rules(data_dir, tmp_path):
    d = eval_only(data_dir, tmp_path, tmp_path / "a.ptz")
    spec = parse_spec(d)
    assert spec.seeds == [1]  # the seeds are the artifacts' keys
    assert "train" not in spec.fingerprint_dict()
    with pytest.raises(SpecError, match="an eval-only campaign has no train:"):
        parse_spec({**d, "train": {"world_size": 2}})
    with pytest.raises(SpecError, match=r"exactly one artifact per seed \[1, 2\]"):
        parse_spec({**d, "seeds": [1, 2]})
    with pytest.raises(SpecError, match="model.adapter: .*not 'package.module:function'"):
        parse_spec({**d, "model": {"adapter": "no colon"}})
    plain = {k: v for k, v in d.items() if k != "artifacts"} | {"seeds": [1]}
    with pytest.raises(SpecError, match="adapters load existing artifacts"):
        parse_spec({**plain, "model": {"adapter": "a.b:c"}})
    with pytest.raises(SpecError, match="rank_split: a per-chunk ttt recipe"):
        parse_spec({**d, "evals": [{"name": "x", "rank_split": 2, "passes": [{"kind": "ttt"}, {"kind": "sliding"}]}]})


def test_new_fields_at_their_defaults_leave_fingerprints_alone(data_dir, tmp_path):
    spec = make_spec(data_dir, str(tmp_path / "s"), evals=[
        {"name": "a", "passes": [{"kind": "slot"}]}, {"name": "b", "passes": [{"kind": "ttt"}, {"kind": "slot_per_sample"}]},
    ])
    blob = json.dumps(spec.fingerprint_dict())
    for field in ("rank_split", "val_truncate", "schedule", "progress", "betas", "logits_dtype", "then", "adapter", "artifacts", "eps"):
        assert f'"{field}"' not in blob.replace('"eps": 1e-05', ""), field
    changed = make_spec(data_dir, str(tmp_path / "s"), evals=[
        {"name": "a", "rank_split": 2, "passes": [{"kind": "slot", "schedule": "constant"}]},
        {"name": "b", "passes": [{"kind": "ttt"}, {"kind": "slot_per_sample"}]},
    ])
    assert changed.fingerprint() != spec.fingerprint()
    assert changed.fingerprint_dict()["evals"][0]["rank_split"] == 2


def test_legality_labels_from_the_recipe_definition(tmp_path, capsys):
    spec = load_spec(JOB)
    labels = {e.name: e.legality.label for e in spec.evals}
    assert labels == {
        "sliding-exact": "score-first",
        "slot100-pr1456": "adapts-on-scored-tokens",
        "ttt-slot-pr1176": "adapts-on-scored-tokens",
        "per-sample-pr1722": "adapts-on-scored-tokens",
        "ttt-adamw-pr1722": "score-first",
        "per-sample-pr1229": "adapts-on-scored-tokens",
        "slot100-causal": "score-first",
    }
    assert main(["validate", "--spec-only", str(JOB)]) == 0  # its artifacts are on a pod, not here
    out = capsys.readouterr().out
    assert "ttt-slot-pr1176: adapts-on-scored-tokens (ttt then: after trains on all of val" in out
    assert "slot100-causal: score-first (slot fits δ only on positions scored by earlier batches)" in out


def test_fingerprint_follows_the_artifact_content(data_dir, tmp_path):
    a = tmp_path / "a.ptz"
    a.write_bytes(baseline_artifact(random_gpt(1).state_dict()))
    moved = tmp_path / "elsewhere" / "a.ptz"
    moved.parent.mkdir()
    moved.write_bytes(a.read_bytes())
    store = open_store(str(tmp_path / "store"))
    assert check_campaign(parse_spec(eval_only(data_dir, tmp_path, a)), store) is False
    assert check_campaign(parse_spec(eval_only(data_dir, tmp_path, moved)), store) is True
    moved.write_bytes(baseline_artifact(random_gpt(2).state_dict()))
    with pytest.raises(CampaignChanged, match=r"changed: artifacts\.1"):
        check_campaign(parse_spec(eval_only(data_dir, tmp_path, moved)), store)


def test_missing_artifact_is_one_line_and_writes_nothing(data_dir, tmp_path, capsys):
    f = write(tmp_path, eval_only(data_dir, tmp_path, tmp_path / "nope.ptz"))
    assert main(["run", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "artifacts.1:" in err[0] and "nope.ptz does not exist" in err[0]
    assert not (tmp_path / "store").exists() or open_store(str(tmp_path / "store")).list() == []


@pytest.mark.parametrize("kind", ["baseline", "adapter"])
def test_pipeline_run_scores_every_table_recipe(ray_local, data_dir, tmp_path, capsys, kind):
    """`pipeline run` on the README table's recipes (jobs/eval_only_baseline.yaml at test size),
    for a baseline-format artifact and for an adapter-loaded model; a re-run skips everything."""
    art = tmp_path / "model.ptz"
    top = {}
    if kind == "baseline":
        art.write_bytes(baseline_artifact(random_gpt(1).state_dict()))
    else:
        toy_adapter.save(toy_adapter.make(), art)
        top["model"] = {"adapter": "tests.workers.toy_adapter:load"}
    d = eval_only(data_dir, tmp_path, art, **top)
    if kind == "adapter":  # its parameters are not named like our GPT's blocks
        for e in d["evals"]:
            for p in e["passes"]:
                if p["kind"] == "ttt":
                    p["params"] = ["*"]
    f = write(tmp_path, d)
    assert main(["run", str(f)]) == 0
    summary = json.loads((tmp_path / "results" / "eo" / "summary.json").read_text())
    assert set(summary["evals"]) == {e["name"] for e in d["evals"]}
    store, layout = open_store(d["store"]), Layout("eo")
    for name, r in summary["evals"].items():
        assert r["complete"], name
        result = store.get_json(layout.result(1, name))
        assert r["legality"] == result["legality"] == parse_spec(d).eval_recipe(name).legality.as_dict()
        assert result["model"]["format"] == ("int8_clean_per_row_v1" if kind == "baseline" else "adapter")
    assert store.get_json(layout.manifest(1))["imported_from"] == str(art)
    capsys.readouterr()
    assert main(["run", str(f)]) == 0
    assert "ran 0 unit(s)" in capsys.readouterr().out
