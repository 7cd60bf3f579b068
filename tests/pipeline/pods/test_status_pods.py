"""`pipeline status` shows the cluster's pods as the driver last saw them, and with --pods asks
RunPod: a pod RunPod calls stopped or gone shows as dead."""

from __future__ import annotations

import yaml

from pipeline.cli import main
from pipeline.records.ledger import Ledger
from pipeline.progress.cli import pod_verdicts
from pipeline.progress.view import campaign_status
from pipeline.store import Layout, open_store
from tests.conftest import make_spec


def node(node_id, pod, alive=True, gpus=8.0):
    return {"node_id": node_id, "alive": alive, "gpus": gpus, "gpu_type": "H100", "usd_per_gpu_hour": 2.69, "pod_id": pod}


def test_status_shows_pods_and_runpods_verdict(runpod, data_dir, tmp_path, capsys):
    alive, exited, gone = runpod.add_pod(), runpod.add_pod(status="EXITED"), "pod-terminated"
    spec = make_spec(data_dir, str(tmp_path / "store"))
    store, layout = open_store(spec.store), Layout("t")
    Ledger(store, layout, "r1").cluster([node("n1", alive), node("n2", exited, alive=False), node("n3", gone, alive=False)])
    st = campaign_status(spec, store)
    assert [n.pod_id for n in st.nodes] == [alive, exited, gone]
    verdicts = pod_verdicts(st)
    assert verdicts[alive].startswith("alive") and verdicts[exited].startswith("dead (EXITED")
    assert verdicts[gone].startswith("dead (not in the account")

    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    assert main(["status", str(f), "--pods"]) == 0
    out = capsys.readouterr().out
    assert "pods" in out and exited in out and "went back to PENDING" in out and "dead" in out
    runpod.fail_next(401, times=10)
    assert main(["status", str(f), "--pods"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --pods:") and len(err.strip().splitlines()) == 1 and runpod.key not in err
