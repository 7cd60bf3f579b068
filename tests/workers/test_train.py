from pathlib import Path

import pytest
import torch

from pipeline.store import Layout, open_store
from tests.conftest import make_spec
from workers.group import Group
from workers.train import ArtifactTooLarge, lr_multiplier, ray_train_loop, train

CPU = Group(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


def one_proc(data_dir, store, **train):
    return make_spec(data_dir, store, train={"world_size": 1, "max_steps": 4, **train})


def test_deterministic_per_seed(data_dir, tmp_path):
    shas = []
    for run, seed in ((0, 1), (1, 1), (2, 2)):
        spec = one_proc(data_dir, str(tmp_path / f"s{run}"))
        summary = train(spec, seed, spec.store, CPU, {"git_commit": "abc"}, f"a{run}")
        assert summary["steps"] == 4
        m = open_store(spec.store).get_json(Layout(spec.name).manifest(seed))
        assert m["provenance"]["git_commit"] == "abc" and m["provenance"]["torch"] == torch.__version__
        assert m["bytes"] == len(open_store(spec.store).get(Layout(spec.name).artifact(seed, m["attempt"])))
        shas.append(m["sha256"])
    assert shas[0] == shas[1] != shas[2]


def test_artifact_over_the_limit_is_refused(data_dir, tmp_path):
    spec = one_proc(data_dir, str(tmp_path / "s"), artifact_limit_bytes=1000, max_steps=1)
    with pytest.raises(ArtifactTooLarge, match=r"above train.artifact_limit_bytes \(1,000\)"):
        train(spec, 1, spec.store, CPU, {}, "a")
    assert not open_store(spec.store).exists(Layout(spec.name).manifest(1))


def test_lr_schedule():
    spec_train = make_spec(Path("."), "s", train={"warmup_steps": 4, "warmdown_frac": 0.5}).train
    assert lr_multiplier(0, 0.0, spec_train) == 0.25
    assert lr_multiplier(10, 0.25, spec_train) == 1.0
    assert lr_multiplier(10, 0.75, spec_train) == pytest.approx(0.5)
    assert lr_multiplier(10, 1.0, spec_train) == 0.0


def test_ray_worker_group_all_reduces(ray_local, data_dir, tmp_path):
    """Two Ray Train workers (gloo): each trains on its own slice of every batch, so they only end
    with identical weights if gradients and Muon updates were really all-reduced."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    spec = make_spec(data_dir, str(tmp_path / "s"), train={"world_size": 2, "max_steps": 5})
    trainer = TorchTrainer(
        ray_train_loop,
        train_loop_config={"spec": spec.model_dump(mode="json"), "seed": 7, "store_uri": spec.store, "attempt": "a1"},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=True),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name="t-allreduce", storage_path=str(tmp_path / "ray")),
    )
    result = trainer.fit()
    assert result.error is None
    m = open_store(spec.store).get_json(Layout(spec.name).manifest(7))
    digests = m["train"]["replica_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert m["train"]["steps"] == 5 and m["train"]["world_size"] == 2


def test_keeps_the_newest_checkpoints_and_the_artifact(data_dir, tmp_path):
    spec = one_proc(data_dir, str(tmp_path / "s"), max_steps=6, checkpoint_every_steps=1, keep_checkpoints=2)
    train(spec, 1, spec.store, CPU, {}, "a")
    store, layout = open_store(spec.store), Layout(spec.name)
    dirs = sorted({k.split("/ckpt/")[1].split("/")[0] for k in store.list(f"{layout.train_dir(1)}/ckpt")})
    assert dirs == ["step-00000005-a", "step-00000006-a"]  # 6 were written
    m = store.get_json(layout.manifest(1))
    assert store.exists(f"{layout.train_dir(1)}/{m['artifact']}")
