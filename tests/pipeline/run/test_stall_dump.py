"""A driver loop turn that does not come round writes every thread's stack to stderr (the job's
log), so a stuck call can be found afterwards; fake units on the thread executor, no Ray."""

from __future__ import annotations

import time

import pipeline.run.driver as driver_mod
from bench.fake_units import fake_eval, fake_train
from pipeline.run.driver import Driver
from pipeline.run.executor import ThreadExecutor
from tests.conftest import make_spec


def test_a_stuck_loop_turn_dumps_every_threads_stack(data_dir, tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(driver_mod, "STALL_DUMP_S", 0.5)
    spec = make_spec(data_dir, str(tmp_path / "store"), seeds=[1], evals=[{"name": "sw", "seq_len": 64, "stride": 16, "shards": 2}])
    stuck = []

    def log(line: str) -> None:
        if line.startswith("start  train/") and not stuck:  # one launch hangs (a call to a vanished host)
            stuck.append(line)
            time.sleep(1.5)

    report = Driver(spec, log=log, train_fn=fake_train, eval_fn=fake_eval, executor=lambda fns: ThreadExecutor(fns, gpus=2)).run()
    assert not report.failed and stuck
    err = capfd.readouterr().err
    assert "Timeout (0:00:00.500000)!" in err, err[-2000:]
    assert "in _launch" in err and "in _turn" in err, err[-2000:]  # where the loop was stuck
    assert err.count("Timeout (") == 1  # the turns that came round in time dumped nothing
