"""Checkpoints of a multi-rank group (workers/checkpoint.py): each rank uploads its own part, and
rank 0 commits only parts of one step (issue 23 point 8)."""

from __future__ import annotations

import pytest
import torch

from pipeline.store import Layout, open_store
from workers.checkpoint import restore_checkpoint, save_checkpoint
from workers.group import Group, spawn


def _parts():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    a, b = model
    opts = [torch.optim.Adam(a.parameters()), torch.optim.SGD([b.weight], lr=0.1, momentum=0.9), torch.optim.Adam([b.bias])]
    return model, opts


def _save(rank: int, world: int, store_uri: str, steps: tuple[int, ...]) -> None:
    model, opts = _parts()
    group = Group(rank, world, rank, torch.device("cpu"))
    save_checkpoint(open_store(store_uri), Layout("t"), 1, group, steps[rank], model, opts, {}, {}, "a", keep=3)


def _restore(rank: int, world: int, store_uri: str, out: str) -> None:
    model, opts = _parts()
    meta = restore_checkpoint(open_store(store_uri), Layout("t"), 1, Group(rank, world, rank, torch.device("cpu")), model, opts, None)
    if rank == 0:
        open_store(out).put_json("meta.json", meta)


def test_a_checkpoint_is_committed_only_when_every_rank_saved_its_step(tmp_path):
    store_uri = str(tmp_path / "s")
    store, layout = open_store(store_uri), Layout("t")
    spawn(_save, 2, "cpu", (store_uri, (4, 4)))
    assert store.exists(f"{layout.train_ckpt(1, 4, 'a')}/commit.json")

    with pytest.raises(ValueError, match=r"checkpoint at step 5 lacks rank\(s\) \[1\].*not committing"):
        spawn(_save, 2, "cpu", (store_uri, (5, 6)))  # rank 1 drifted a step
    commits = [k for k in store.list(f"{layout.train_dir(1)}/ckpt") if k.endswith("commit.json")]
    assert commits == [f"{layout.train_ckpt(1, 4, 'a')}/commit.json"]  # neither step 5 nor 6 committed

    spawn(_restore, 2, "cpu", (store_uri, str(tmp_path / "out")))  # the restart takes step 4, all of it
    assert open_store(str(tmp_path / "out")).get_json("meta.json")["step"] == 4
