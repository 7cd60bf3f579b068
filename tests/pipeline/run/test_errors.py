"""The error table and the retry policy: what is retried, what fails, after how many attempts."""

from __future__ import annotations

import pytest
import ray.exceptions as rex

from pipeline.run.errors import Action, ErrorClass, RetryPolicy, ScriptError, UnitError, classify


def task_error(cause: BaseException) -> BaseException:
    """What ray.get raises when a task raised `cause`."""
    return rex.RayTaskError("fn", "Traceback ...\n" + str(cause), cause).as_instanceof_cause()


@pytest.mark.parametrize(
    "err, kind, cls",
    [
        (task_error(ValueError("val token id 700 is beyond tokenizer")), "bad-input", ErrorClass.DETERMINISTIC),
        (UnitError("ArtifactTooLarge: seed 1: artifact is 2,000 bytes"), "bad-input", ErrorClass.DETERMINISTIC),
        (rex.NodeDiedError("node 1a2b has been marked dead"), "node-death", ErrorClass.TRANSIENT),
        (task_error(RuntimeError("An error occurred (SlowDown) when calling the PutObject operation")), "storage", ErrorClass.TRANSIENT),
        (task_error(OSError("[Errno 104] Connection reset by peer")), "storage", ErrorClass.TRANSIENT),
        (task_error(OSError(28, "No space left on device")), "disk-full", ErrorClass.DETERMINISTIC),
        (ScriptError("rank 0: train_gpt.py exited with status 1 after 3.0 s: OSError: [Errno 28] No space left on device"),
         "disk-full", ErrorClass.DETERMINISTIC),
        (task_error(RuntimeError("Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7)")), "nccl-timeout", ErrorClass.TRANSIENT),
        (task_error(RuntimeError("CUDA error: uncorrectable ECC error encountered")), "gpu-fault", ErrorClass.TRANSIENT),
        (rex.OutOfMemoryError("Task was killed due to the node running low on memory"), "oom-kill", ErrorClass.TRANSIENT),
        (task_error(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED")), "crash", ErrorClass.UNKNOWN),
        (task_error(RuntimeError("An error occurred (503) when calling the HeadObject operation")), "storage", ErrorClass.TRANSIENT),
        (task_error(RuntimeError("loss diverged at step 500 of 503")), "crash", ErrorClass.UNKNOWN),
        (rex.WorkerCrashedError(), "crash", ErrorClass.UNKNOWN),
    ],
)
def test_the_table(err, kind, cls):
    f = classify(err)
    assert (f.kind, f.cls) == (kind, cls)
    assert "\n" not in f.message


def test_a_crash_on_a_node_that_is_gone_is_the_nodes_death():
    f = classify(rex.WorkerCrashedError(), nodes=["n1"], dead_nodes=["n1"])
    assert (f.kind, f.cls) == ("node-death", ErrorClass.TRANSIENT)
    # ... but bad input stays bad input wherever it ran
    assert classify(task_error(ValueError("x")), nodes=["n1"], dead_nodes=["n1"]).cls is ErrorClass.DETERMINISTIC


def test_transient_failures_retry_with_backoff_elsewhere_up_to_the_count():
    policy = RetryPolicy(max_transient=3, backoff_s=2.0)
    history, delays = [], []
    for i in range(4):
        f = classify(rex.NodeDiedError(f"node n{i} has been marked dead"), nodes=[f"n{i}"])
        d = policy.decide(f, history)
        history.append(f)
        if d.action is Action.FAIL:
            break
        delays.append(d.delay_s)
        assert d.avoid_nodes == tuple(f"n{j}" for j in range(i + 1))
    assert delays == [2.0, 4.0, 8.0]
    assert d.action is Action.FAIL and "failed 4 times" in d.reason


def test_bad_input_fails_at_once_and_the_same_crash_twice_fails():
    policy = RetryPolicy(max_transient=5, backoff_s=0)
    assert policy.decide(classify(task_error(ValueError("bad"))), []).action is Action.FAIL
    segv = classify(rex.WorkerCrashedError(), nodes=["a"])
    assert policy.decide(segv, []).action is Action.RETRY  # once: it may have been the machine
    again = classify(rex.WorkerCrashedError(), nodes=["b"])
    d = policy.decide(again, [segv])
    assert d.action is Action.FAIL and "the same error on two nodes" in d.reason
    other = classify(task_error(RuntimeError("step 12: CUBLAS failure at 0x7f3a")), nodes=["a"])
    same_but_numbers = classify(task_error(RuntimeError("step 13: CUBLAS failure at 0x7f3b")), nodes=["a"])
    assert policy.decide(same_but_numbers, [other]).reason.startswith("the same error twice")
