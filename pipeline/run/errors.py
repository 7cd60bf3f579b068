"""What went wrong in a unit attempt, classified once, and the retry policy that acts on it
(docs/design.md §4, docs/faults.md "Errors and retries").

The driver asks two questions of every failed attempt: *what kind of failure is this* (`classify`,
one table) and *what now* (`RetryPolicy.decide`: retry after a delay, away from the nodes it
failed on, or FAILED). Both answers are values the driver logs and records in the ledger.

    transient      the world, not the unit: node or pod death, preemption, OOM kill, S3
                   throttling / 5xx / connection reset, NCCL timeout, CUDA ECC / Xid, lost
                   objects. Retried with backoff, elsewhere where possible, up to the spec's count.
    deterministic  the unit itself: bad input, a refused artifact (the unit raised one of the
                   application errors), a full disk (ENOSPC). FAILED at once.
    unknown        a crash that could be either (a segfault, a kernel abort, an exception we do
                   not know). Retried once; the same error again (same signature, on this node or
                   another) is deterministic: FAILED after at most 2 attempts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum


class UnitError(RuntimeError):
    """An application error a worker group recorded for its launcher (bad input, a refused
    artifact): deterministic."""


class NodeLost(RuntimeError):
    """The driver saw a node of an attempt leave the cluster (its own view, pipeline/run/driver.py) and
    abandoned the attempt without waiting for Ray to fail it: a node death."""


class ScriptError(RuntimeError):
    """A user's training script failed (docs/scripts.md: Bring your own train_gpt.py): its log's last lines,
    then one line saying how it ended. Classified by that text like any error: an NCCL timeout in
    it is transient, a Python error of the script's own is deterministic, a kill or crash unknown."""

    tail_lines = 50


class ErrorClass(str, Enum):
    TRANSIENT = "transient"
    DETERMINISTIC = "deterministic"
    UNKNOWN = "unknown"


# Application errors: the unit's own input or code is wrong, so another attempt repeats them.
# (workers.group.APP_ERRORS are these; kept by name here so the driver never imports torch.)
_APP_ERRORS = ("ValueError", "FloatingPointError", "FileNotFoundError", "ImportError", "ShardError", "ArtifactTooLarge", "UnitError")


# A script's own Python errors (its last exception, workers/script_logs.py): a bug or bad input
# of the script, which another attempt repeats.
_SCRIPT_ERRORS = (
    "ValueError", "FloatingPointError", "FileNotFoundError", "ImportError", "ModuleNotFoundError", "AssertionError", "KeyError",
    "TypeError", "NameError", "SyntaxError", "AttributeError", "IndexError", "ZeroDivisionError", "NotImplementedError",
    "IsADirectoryError", "NotADirectoryError", "PermissionError",
)


@dataclass(frozen=True)
class Rule:
    kind: str
    cls: ErrorClass
    types: tuple[str, ...] = ()  # exception class names (the error itself or its Ray cause)
    pattern: str | None = None  # regex over the error's whole text (a worker's traceback included)


# One table, first match wins (docs/design.md §4 and docs/faults.md "Errors and retries" describe its classes). Order matters where texts overlap: an
# application error raised inside a dead group must stay deterministic.
TABLE: tuple[Rule, ...] = (
    Rule("bad-input", ErrorClass.DETERMINISTIC, types=_APP_ERRORS),
    # A full disk is not the world passing by: the attempt's own files filled it (a script's
    # checkpoints, a run dir left behind), and a retry on that disk fills it again.
    Rule("disk-full", ErrorClass.DETERMINISTIC, pattern=r"No space left on device|\[Errno 28\]|\bENOSPC\b"),
    Rule("node-death", ErrorClass.TRANSIENT, types=("NodeDiedError", "NodeLost"), pattern=r"node .* (has been marked dead|died)|NodeDiedError"),
    Rule("preemption", ErrorClass.TRANSIENT, pattern=r"preempt|spot instance|SIGTERM received"),
    Rule("oom-kill", ErrorClass.TRANSIENT, types=("OutOfMemoryError",), pattern=r"killed by the (OOM killer|memory monitor)|Task was killed due to the node running low on memory"),
    Rule(
        "storage", ErrorClass.TRANSIENT,
        pattern=r"SlowDown|Throttl|RequestLimitExceeded|ServiceUnavailable|InternalError|HTTP 50[0-4]|\(50[0-4]\)|RequestTimeout"
        r"|Connection reset|EndpointConnectionError|ReadTimeoutError|ConnectTimeoutError|ConnectionClosedError",
    ),
    Rule("nccl-timeout", ErrorClass.TRANSIENT, pattern=r"NCCL.*(timeout|timed out|Watchdog)|Watchdog caught collective operation timeout|ncclSystemError|ncclRemoteError"),
    Rule("gpu-fault", ErrorClass.TRANSIENT, pattern=r"ECC error|uncorrectable ECC|\bXid\b|GPU has fallen off the bus|GPU is lost"),
    Rule("ray-system", ErrorClass.TRANSIENT, types=("ObjectLostError", "OwnerDiedError", "RaySystemError", "ActorUnavailableError", "ActorDiedError")),
    # after the transient rules: a script that died of an NCCL timeout shows a RuntimeError too
    Rule("script-error", ErrorClass.DETERMINISTIC, pattern=r"exited with status -?\d+ after [\d.]+ s: (" + "|".join(_SCRIPT_ERRORS) + r"):"),
)
CRASH = Rule("crash", ErrorClass.UNKNOWN)
NODE_DEATH = next(r for r in TABLE if r.kind == "node-death")


@dataclass(frozen=True)
class Failure:
    kind: str  # the rule that matched: node-death, storage, bad-input, crash, ...
    cls: ErrorClass
    message: str  # one line: "Type: last line"
    signature: str  # the message with numbers, addresses and ids blanked: "the same error" compares these
    nodes: tuple[str, ...] = ()  # where the attempt ran
    tail: tuple[str, ...] = ()  # the error's last lines (a worker's traceback), for the summary

    def as_dict(self) -> dict:
        return {"kind": self.kind, "class": self.cls.value, "error": self.message, "nodes": list(self.nodes), "tail": list(self.tail)}


def _names(err: BaseException) -> set[str]:
    """Class names of the error, what it wraps (a RayTaskError's cause) and their bases."""
    out: set[str] = set()
    seen: BaseException | None = err
    while seen is not None and type(seen).__name__ not in out:
        out.update(c.__name__ for c in type(seen).__mro__)
        seen = getattr(seen, "cause", None) or seen.__cause__
    return out


TAIL_LINES = 10


def _lines(err: BaseException) -> list[str]:
    return [ln.rstrip()[:300] for ln in str(err).splitlines() if ln.strip()]


def one_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err
    lines = _lines(cause)
    return f"{type(cause).__name__}: {lines[-1].strip() if lines else ''}"[:500]


def signature(message: str) -> str:
    return re.sub(r"0x[0-9a-fA-F]+|[0-9a-f]{8,}|\d+", "#", message)


def classify(err: BaseException, nodes: Iterable[str] = (), dead_nodes: Iterable[str] = ()) -> Failure:
    """The table's verdict on `err`. `nodes` are where the attempt ran; if one of them is gone
    from the cluster, a crash there is the node's death, not the unit's fault."""
    nodes = tuple(sorted(set(nodes)))
    message = one_line(err)
    names, text = _names(err), f"{type(err).__name__}: {err}"
    rule = CRASH
    if isinstance(err, UnitError) or names & set(TABLE[0].types):
        rule = TABLE[0]
    elif set(nodes) & set(dead_nodes):
        rule = NODE_DEATH
    else:
        for r in TABLE[1:]:
            if names & set(r.types) or (r.pattern and re.search(r.pattern, text, re.IGNORECASE)):
                rule = r
                break
    cause = getattr(err, "cause", None) or err
    # a script's failure keeps its log's last lines (its own text, not the Ray traceback around it)
    tail = _lines(cause)[-ScriptError.tail_lines:] if isinstance(cause, ScriptError) else _lines(err)[-TAIL_LINES:]
    return Failure(rule.kind, rule.cls, message, signature(message), nodes, tuple(tail))


class Action(str, Enum):
    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    delay_s: float = 0.0
    avoid_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetryPolicy:
    """`max_transient` retries of transient failures per unit, the first after `backoff_s`,
    doubling up to `max_backoff_s`; unknown failures get one more attempt unless they repeat."""

    max_transient: int
    backoff_s: float
    max_backoff_s: float = 300.0

    def decide(self, failure: Failure, history: list[Failure]) -> Decision:
        """`history`: this unit's earlier failures in this run, oldest first."""
        if failure.cls is ErrorClass.DETERMINISTIC:
            return Decision(Action.FAIL, f"{failure.kind}: {failure.message}")
        same = [f for f in history if f.signature == failure.signature and f.cls is ErrorClass.UNKNOWN]
        if failure.cls is ErrorClass.UNKNOWN and same:
            where = "on two nodes" if set(same[-1].nodes) != set(failure.nodes) else "twice"
            return Decision(Action.FAIL, f"the same error {where} (deterministic): {failure.message}")
        retries = sum(1 for f in history if f.cls is not ErrorClass.DETERMINISTIC)
        if retries >= self.max_transient:
            return Decision(Action.FAIL, f"failed {retries + 1} times, last ({failure.kind}): {failure.message}")
        delay = min(self.backoff_s * 2**retries, self.max_backoff_s)
        avoid = tuple(sorted({n for f in (*history, failure) for n in f.nodes}))
        return Decision(Action.RETRY, f"{failure.kind} ({failure.cls.value}): {failure.message}", delay, avoid)
