"""One driver per campaign: a second one refuses, naming the holder; --take-over works once the
lease has expired; a holder on this host whose process is gone frees it at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from pipeline.run.lease import Lease, LeaseHeld
from pipeline.store import open_store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "st"))
    return open_store(f"s3://{request.getfixturevalue('s3_bucket')}/p")


def test_second_holder_refuses_naming_the_first(store):
    a = Lease(store, "c/lease", "campaign 'c'", "driver", ttl_s=60)
    a.acquire()
    b = Lease(store, "c/lease", "campaign 'c'", "driver", ttl_s=60)
    with pytest.raises(LeaseHeld, match=rf"campaign 'c' is held by driver .*:{os.getpid()} \(heartbeat \d+ s ago") as e:
        b.acquire()
    assert "\n" not in str(e.value)
    with pytest.raises(LeaseHeld):
        b.acquire(take_over=True)  # not expired: take-over waits for the heartbeat to go stale
    a.release()
    b.acquire()  # released: free at once
    assert b.holder().token == b.token


def test_take_over_after_expiry_and_the_old_holder_notices(store):
    old = Lease(store, "c/lease", "campaign 'c'", "driver", ttl_s=0.2)
    old.acquire()
    time.sleep(0.3)
    new = Lease(store, "c/lease", "campaign 'c'", "driver", ttl_s=60)
    with pytest.raises(LeaseHeld, match="expired: run again with --take-over"):
        new.acquire()
    replaced = new.acquire(take_over=True)
    assert replaced.token == old.token
    assert old.renew() is False and old.lost.is_set()  # within one heartbeat it stops writing
    old.release()  # a lost lease is not released over the new holder's
    assert new.holder().token == new.token and not new.holder().released


def test_a_dead_holder_on_this_host_is_replaced_at_once(tmp_path):
    store = open_store(str(tmp_path / "st"))
    code = (
        "import sys; from pipeline.run.lease import Lease; from pipeline.store import open_store;"
        f"Lease(open_store({store.uri!r}), 'c/lease', 'c', 'driver').acquire()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # it exits holding the lease (as if killed)
    held = Lease(store, "c/lease", "c", "driver")
    assert held.holder() is not None and not held.holder().released
    held.acquire()
    keys = store.list("c/lease")
    assert len(keys) == 1 and json.loads(store.get(keys[0]))["pid"] == os.getpid()  # older generations pruned


def test_heartbeat_renews(tmp_path):
    store = open_store(str(tmp_path / "st"))
    lease = Lease(store, "c/lease", "c", "driver", renew_s=0.05)
    lease.acquire()
    first = lease.holder().heartbeat
    lease.start_heartbeat()
    deadline = time.monotonic() + 10
    while lease.holder().heartbeat == first and time.monotonic() < deadline:
        time.sleep(0.02)
    lease.release()
    assert lease.holder().heartbeat > first and lease.holder().released


def test_pipeline_eval_holds_its_unit(data_dir, tmp_path, capsys):
    import yaml

    from pipeline.cli import main
    from pipeline.store import Layout
    from tests.conftest import make_spec
    from tests.workers.helpers import commit_random_model

    spec = make_spec(data_dir, str(tmp_path / "store"), seeds=[1])
    commit_random_model(spec, 1)
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    store = open_store(spec.store)
    other = Lease(store, f"{Layout(spec.name).eval_dir(1, 'sw')}/lease", "eval", "pipeline eval")
    other.acquire()  # a `pipeline eval` of this unit running elsewhere
    before = store.list()
    assert main(["eval", str(f), "--seed", "1", "--recipe", "sw"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is held by pipeline eval" in err[0]
    assert [k for k in store.list() if not k.endswith("campaign.json")] == before
    other.release()
    assert main(["eval", str(f), "--seed", "1", "--recipe", "sw"]) == 0
