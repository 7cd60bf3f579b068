"""`pipeline eval` / `pipeline run` refuse bad input before their first write to the store: exit 2,
one line on stderr naming the field or file, and the store exactly as it was. No Ray is started."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.store import Layout, open_store
from tests.conftest import make_spec
from tests.workers.helpers import commit_random_model
from workers.data import check_eval_inputs, read_shard, shard_files
from workers.plan import ensure_plan

SECRET = "sEcReT-Do-NoT-LoG-7f3a9c"


def _spec_file(spec, tmp_path: Path) -> Path:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return f


def _snapshot(store) -> dict[str, bytes]:
    return {k: store.get(k) for k in store.list()}


def _refused(capsys, argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert SECRET not in out.err + out.out
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def trained(data_dir, tmp_path):
    """A campaign whose seed 1 has a model (seed 2 has none), and its spec file."""
    spec = make_spec(data_dir, str(tmp_path / "st"))
    commit_random_model(spec, 1)
    return spec, _spec_file(spec, tmp_path)


@pytest.fixture(scope="module")
def small_tokenizer(corpus, tmp_path_factory) -> Path:
    """A 400-piece tokenizer trained on the same corpus: it does not match the 512-piece data."""
    from workers.prepare import read_documents
    from workers.tokenizer import train_tokenizer

    docs = [d.strip() for d in read_documents([corpus]) if d.strip()]
    return train_tokenizer(docs, 400, tmp_path_factory.mktemp("tok") / "small")


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--seed", "7", "--recipe", "sw"], ["seeds", "--seed 7"]),
        (["--seed", "1", "--recipe", "nope"], ["evals", "'nope'"]),
        (["--seed", "2", "--recipe", "sw"], ["seeds/2/train/manifest.json", "no trained model"]),
        (["--seed", "1", "--recipe", "sw", "--shard", "-1"], ["--shard -1"]),
        (["--seed", "1", "--recipe", "sw", "--shard", "1"], ["--shard 1", "1 shard(s)"]),  # no plan yet: it would have 1
    ],
)
def test_eval_refuses_what_the_spec_or_store_does_not_have(trained, capsys, argv, needles):
    spec, f = trained
    store = open_store(spec.store)
    before = _snapshot(store)
    _refused(capsys, ["eval", str(f), *argv], *needles)
    assert _snapshot(store) == before


def test_eval_shard_beyond_the_stored_plan(trained, capsys):
    spec, f = trained
    store = open_store(spec.store)
    plan = ensure_plan(store, spec, 1, spec.evals[0], default_shards=3)
    assert len(plan["shards"]) == 3
    before = _snapshot(store)
    _refused(capsys, ["eval", str(f), "--seed", "1", "--recipe", "sw", "--shard", "3"], "--shard 3", "plan.json", "3 shard(s)")
    assert _snapshot(store) == before


def test_eval_refuses_a_truncated_val_shard(data_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    val = shard_files(data, "val")[-1]
    with open(val, "r+b") as fh:
        fh.truncate(val.stat().st_size - 10)
    spec = make_spec(data, str(tmp_path / "st"))
    commit_random_model(spec, 1)
    store = open_store(spec.store)
    before = _snapshot(store)
    _refused(capsys, ["eval", str(_spec_file(spec, tmp_path)), "--seed", "1", "--recipe", "sw"], str(val), "size")
    assert _snapshot(store) == before
    assert not store.exists(Layout(spec.name).plan(1, "sw"))


def test_eval_and_run_refuse_a_tokenizer_that_does_not_match_the_data(data_dir, small_tokenizer, tmp_path, capsys):
    spec = make_spec(data_dir, str(tmp_path / "st"), data={"tokenizer": str(small_tokenizer)})
    assert max(int(read_shard(v).max()) for v in shard_files(data_dir, "val")) >= 400
    commit_random_model(spec, 1)
    store = open_store(spec.store)
    before = _snapshot(store)
    f = _spec_file(spec, tmp_path)
    line = _refused(capsys, ["eval", str(f), "--seed", "1", "--recipe", "sw"], "fineweb_val_", str(small_tokenizer), "400 pieces")
    assert "does not match the data" in line
    assert _snapshot(store) == before
    # `pipeline run` checks the same before its driver starts (no Ray, nothing written)
    _refused(capsys, ["run", str(f)], "fineweb_val_", str(small_tokenizer))
    assert _snapshot(store) == before


def test_model_vocab_smaller_than_the_tokenizer_is_refused(data_dir, tmp_path, capsys):
    spec = make_spec(data_dir, str(tmp_path / "st"), model={"vocab_size": 256})
    commit_random_model(spec, 1)
    store = open_store(spec.store)
    before = _snapshot(store)
    f = _spec_file(spec, tmp_path)
    _refused(capsys, ["eval", str(f), "--seed", "1", "--recipe", "sw"], "seed 1's model vocab_size 256", "tokenizer.model (512 pieces)")
    _refused(capsys, ["run", str(f)], "c.yaml: model.vocab_size 256", "512 pieces")
    assert _snapshot(store) == before


def test_padded_model_vocab_still_evaluates(data_dir, tmp_path, capsys):
    spec = make_spec(data_dir, str(tmp_path / "st"), model={"vocab_size": 640})
    check_eval_inputs(spec, 640)  # what `pipeline run` checks
    commit_random_model(spec, 1)
    capsys.readouterr()
    assert main(["eval", str(_spec_file(spec, tmp_path)), "--seed", "1", "--recipe", "sw"]) == 0
    assert "val_bpb" in capsys.readouterr().out
    assert open_store(spec.store).exists(Layout(spec.name).result(1, "sw"))


def test_eval_and_run_refuse_an_unreachable_s3_store(data_dir, tmp_path, capsys, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTKEYID0042")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    f = _spec_file(make_spec(data_dir, "s3://bkt/campaigns"), tmp_path)
    for argv in (["eval", str(f), "--seed", "1", "--recipe", "sw"], ["run", str(f)]):
        _refused(capsys, argv, "s3://bkt/campaigns", f"127.0.0.1:{port}", "cannot reach")


def test_eval_and_run_refuse_a_missing_bucket(data_dir, tmp_path, capsys, s3_server):
    import uuid

    import boto3

    bucket = f"missing-{uuid.uuid4().hex[:8]}"
    f = _spec_file(make_spec(data_dir, f"s3://{bucket}/campaigns"), tmp_path)
    for argv in (["eval", str(f), "--seed", "1", "--recipe", "sw"], ["run", str(f)]):
        _refused(capsys, argv, f"s3://{bucket}/campaigns", "no such bucket")
    assert bucket not in {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}


def test_eval_on_s3_checks_before_writing(data_dir, tmp_path, capsys, s3_bucket):
    """The same refusals on an S3 store: an untrained seed leaves the bucket as it was."""
    spec = make_spec(data_dir, f"s3://{s3_bucket}/campaigns")
    commit_random_model(spec, 1)
    store = open_store(spec.store)
    before = _snapshot(store)
    _refused(capsys, ["eval", str(_spec_file(spec, tmp_path)), "--seed", "2", "--recipe", "sw"], "seeds/2/train/manifest.json")
    assert _snapshot(store) == before


# --- spec values, files a spec names, and what status/report read from the store ----------------

MINIMAL = "name: x\nseeds: [1]\ndata: {shards: d, tokenizer: t}\n"


@pytest.mark.parametrize(
    "extra, line",
    [
        ("budget_usd: .inf", "budget_usd: Value error, inf is not a sane amount: give a finite number, at most 1,000,000 $"),
        ("budget_usd: 1e300", "budget_usd: Value error, 1e+300 is not a sane amount: give a finite number, at most 1,000,000 $"),
        ("cluster: {pricing: {usd_per_gpu_hour: 1.0e+9}}",
         "cluster.pricing.usd_per_gpu_hour: Value error, 1e+09 is not a sane amount: give a finite number, at most 100 $ per GPU-hour"),
        ("cluster: {pricing: {usd_per_gpu_hour: .inf}}",
         "cluster.pricing.usd_per_gpu_hour: Value error, inf is not a sane amount: give a finite number, at most 100 $ per GPU-hour"),
    ],
)
def test_absurd_money_is_refused(tmp_path, capsys, extra, line):
    f = tmp_path / "c.yaml"
    f.write_text(MINIMAL + extra + "\n")
    assert _refused(capsys, ["validate", str(f)]) == f"error: {f}: {line}"


def test_validate_checks_the_script_it_names(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "c.yaml"
    f.write_text(MINIMAL + "train: {kind: script, script: rec, world_size: 1}\ncluster: {accelerator: cpu}\n")
    line = _refused(capsys, ["validate", str(f)])
    assert line == f"error: {f}: train.script: {tmp_path / 'rec'} does not exist (--spec-only: check the file alone)"
    assert main(["validate", "--spec-only", str(f)]) == 0
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "train_gpt.py").write_text("print('hi')\n")
    assert main(["validate", str(f)]) == 0


def _eval_only_file(data_dir, tmp_path, artifact: Path) -> Path:
    from tests.pipeline.test_eval_only import eval_only, write

    return write(tmp_path, eval_only(data_dir, tmp_path, artifact))


def test_an_artifact_no_eval_can_load_is_refused_before_the_store_and_a_fixed_one_runs(data_dir, tmp_path, capsys):
    from tests.workers.helpers import baseline_artifact
    from tests.workers.test_adapters import random_gpt

    art = tmp_path / "a.ptz"
    art.write_bytes(b"not an artifact at all")
    f = _eval_only_file(data_dir, tmp_path, art)
    why = f"error: {f}: artifacts.1: {art}: not a readable artifact (Error -3 while decompressing data: incorrect header check)"
    assert _refused(capsys, ["validate", str(f)]) == why
    assert _refused(capsys, ["eval", str(f), "--seed", "1", "--recipe", "sliding-exact"]) == why
    store = tmp_path / "store"
    assert not store.exists() or open_store(str(store)).list() == []  # no campaign.json holding it to that digest
    art.write_bytes(baseline_artifact(random_gpt(1).state_dict()))  # the user fixes the file
    assert main(["validate", str(f)]) == 0
    assert main(["eval", str(f), "--seed", "1", "--recipe", "sliding-exact"]) == 0
    assert "val_bpb" in capsys.readouterr().out


def test_status_shows_the_campaign_beside_a_malformed_lease(trained, capsys):
    from pipeline.run.setup import campaign_lease
    from pipeline.run.lease import LeaseHeld

    spec, f = trained
    store, layout = open_store(spec.store), Layout(spec.name)
    key = f"{layout.lease_dir}/00000003.json"
    store.put(key, b'{"version": 1, "host": "h", "pid": "12"}')
    capsys.readouterr()
    assert main(["status", str(f)]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "DONE" in out  # the campaign, as ever
    assert (f"driver: unknown: {store.uri}/{key}: not a lease object (no token, started, heartbeat, ttl_s, what; wrong type: pid): "
            f"who holds campaign 't' in {store.uri} cannot be told; once no process runs it, run with --take-over to replace the object") in " ".join(out.split())
    store.put(key, b"{cut sho")  # a partial copy
    assert main(["status", str(f), "--json"]) == 0 and "not valid JSON" in capsys.readouterr().out
    # a driver refuses it in one line (LeaseHeld: exit 2) and takes it over when told to
    lease = campaign_lease(store, spec)
    with pytest.raises(LeaseHeld, match="not a lease object"):
        lease.acquire()
    assert lease.acquire(take_over=True) is None and lease.gen == 4 and not store.exists(key)
    lease.release()


def test_status_marks_a_corrupt_manifest_and_shows_the_rest(trained, capsys):
    spec, f = trained
    commit_random_model(spec, 2)
    store, layout = open_store(spec.store), Layout(spec.name)
    store.put(layout.manifest(1), b'{"version": 1, "train": {"ste')
    capsys.readouterr()
    assert main(["status", str(f)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "UNREADABLE" in out and "DONE" in out  # seed 1 marked, seed 2 shown
    assert f"UNREADABLE train/1: {store.uri}/{layout.manifest(1)}: not valid JSON" in out
    store.put(layout.manifest(1), b"[1, 2]")
    assert main(["status", str(f)]) == 0
    assert "not a training manifest" in capsys.readouterr().out


def test_report_to_a_folder_that_cannot_be_made_is_one_line(trained, tmp_path, capsys):
    spec, f = trained
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = _refused(capsys, ["report", str(f), "--bundle", "--results-dir", str(blocker / "res")])
    assert line == f"error: --results-dir: {blocker / 'res' / spec.name}: cannot write the report there ({blocker} is not a directory)"
    assert blocker.read_text() == "" and list(tmp_path.glob("**/bundle-*")) == []
