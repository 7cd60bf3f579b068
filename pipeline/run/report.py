"""What one run of the driver did: the RunReport `pipeline run` prints and tests read."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.records.units import Unit
from pipeline.spec import CampaignSpec


@dataclass
class RunReport:
    spec: CampaignSpec
    done: list[Unit] = field(default_factory=list)  # ran to DONE in this run
    skipped: list[Unit] = field(default_factory=list)  # DONE before this run
    failed: dict[Unit, str] = field(default_factory=dict)
    estimated: dict[str, str] = field(default_factory=dict)  # "seed/recipe" → why its stop rule ended it
    budget: str | None = None  # why units were left PENDING by the budget
    spent_usd: float | None = None  # with a budget: the campaign's bill when the run ended (`pipeline cost`'s total)
    blocked: list[Unit] = field(default_factory=list)  # could not run: their training failed
    waiting: dict[str, str] = field(default_factory=dict)  # unit → what it waited for in vain (left PENDING)
    lease_lost: str | None = None  # another driver took the campaign over mid-run
    durations: dict[str, float] = field(default_factory=dict)  # unit id → seconds, this run
    attempts: dict[Unit, int] = field(default_factory=dict)  # attempts started in this run, per unit
    wall_s: float = 0.0

    def ran(self) -> str:
        """What this run ran: every unit it started, however its attempts ended (a unit that ran
        twice and failed, or was stopped by its rule, ran)."""
        n, tries = len(self.attempts), sum(self.attempts.values())
        if not n:
            return "ran 0 unit(s)"
        ended = {"DONE": len(self.done), "FAILED": sum(1 for u in self.failed if u in self.attempts)}
        ended["unfinished"] = n - len({*self.done, *self.failed} & set(self.attempts))
        parts = ", ".join(f"{k} {v}" for k, v in ended.items() if v)
        return f"ran {n} unit(s) in {tries} attempt(s) ({parts})"
