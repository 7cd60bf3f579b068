"""Parameter-golf training logs → training metrics (docs/scripts.md: Bring your own train_gpt.py).

The records' train_gpt.py scripts all print the baseline's lines (rank 0, to stdout and
logs/<run>.txt), whatever else they change:

    step:200/20000 train_loss:2.9117 train_time:14123ms step_avg:70.62ms
    step:1000/20000 val_loss:2.3107 val_bpb:1.3686 train_time:70190ms step_avg:70.19ms
    stopping_early: wallclock_cap train_time:600035ms step:8512/20000
    Serialized model: 67224983 bytes
    Serialized model int8+zlib: 15815847 bytes (payload:17178912 raw_torch:17224025 payload_ratio:3.91x)
    Code size: 47686 bytes
    final_int8_zlib_roundtrip_exact val_loss:2.05971281 val_bpb:1.21986701

A line may carry a prefix (a timestamp, torchrun's `[rank0]:`); anything else is ignored. Pure
text work (no torch), so `pipeline status` can read a log from the store on a laptop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf"
_STEP = re.compile(r"\bstep:(\d+)/(\d+)\b(.*)")
_FIELD = re.compile(rf"\b(val_loss|val_bpb|train_loss|train_time|step_avg):({_NUM})(ms)?\b", re.IGNORECASE)
_STOP = re.compile(r"\bstopping_early:\s*(\w+)")
_SERIALIZED = re.compile(r"\bSerialized model(?: ([^:]+?))?:\s*(\d+) bytes")
_CODE = re.compile(r"\bCode size:\s*(\d+) bytes")
_FINAL = re.compile(rf"\b(final_\w+_exact)\s+val_loss:({_NUM})\s+val_bpb:({_NUM})")


@dataclass(frozen=True)
class StepLine:
    step: int
    of: int
    train_time_ms: float | None = None
    step_avg_ms: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    val_bpb: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class GolfLog:
    steps: list[StepLine] = field(default_factory=list)
    stopped_early: str | None = None  # "wallclock_cap"
    serialized: dict[str, int] = field(default_factory=dict)  # "model" / "int8+zlib" / ... → bytes
    code_bytes: int | None = None
    finals: dict[str, dict[str, float]] = field(default_factory=dict)  # final_*_exact → val_loss, val_bpb, in log order

    @property
    def final(self) -> tuple[str, dict[str, float]] | None:
        """The script's last final_*_exact line: the number a record submits."""
        return next(reversed(self.finals.items()), None)

    def metrics(self) -> dict[str, Any]:
        """The seed's training metrics as the manifest, status and summary hold them."""
        out: dict[str, Any] = {}
        if self.steps:
            last = self.steps[-1]
            out.update(steps=last.step, planned_steps=last.of)
            timed = [s for s in self.steps if s.train_time_ms is not None]
            if timed:
                out.update(wall_s=timed[-1].train_time_ms / 1000.0, step_avg_ms=timed[-1].step_avg_ms)
            trained = [s for s in self.steps if s.train_loss is not None]
            if trained:
                out["final_train_loss"] = trained[-1].train_loss
            vals = [s for s in self.steps if s.val_bpb is not None]
            if vals:
                out.update(last_val={"step": vals[-1].step, "val_loss": vals[-1].val_loss, "val_bpb": vals[-1].val_bpb})
        if self.stopped_early:
            out["stopped_early"] = self.stopped_early
        if self.serialized:
            out["serialized_bytes"] = dict(self.serialized)
        if self.code_bytes is not None:
            out["code_bytes_logged"] = self.code_bytes
        if self.finals:
            out["finals"] = {k: dict(v) for k, v in self.finals.items()}
            name, numbers = self.final
            out["final"] = {"name": name, **numbers}
        return out


def parse_line(log: GolfLog, line: str) -> None:
    if m := _FINAL.search(line):
        log.finals[m.group(1)] = {"val_loss": float(m.group(2)), "val_bpb": float(m.group(3))}
    elif m := _STOP.search(line):
        log.stopped_early = m.group(1)
    elif m := _SERIALIZED.search(line):
        log.serialized[(m.group(1) or "model").strip()] = int(m.group(2))
    elif m := _CODE.search(line):
        log.code_bytes = int(m.group(1))
    elif m := _STEP.search(line):
        fields = {k.lower(): float(v) for k, v, _ in _FIELD.findall(m.group(3))}
        if fields:  # "step:N/M" alone (a warmup counter, a progress bar) is not a metrics line
            log.steps.append(StepLine(
                int(m.group(1)), int(m.group(2)), fields.get("train_time"), fields.get("step_avg"),
                fields.get("train_loss"), fields.get("val_loss"), fields.get("val_bpb"),
            ))


def parse_log(text: str) -> GolfLog:
    log = GolfLog()
    for line in text.splitlines():
        parse_line(log, line)
    return log
