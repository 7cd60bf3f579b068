"""Live progress of `pipeline run`: rich bars in a terminal, a line a minute in a log.

A background thread reads the campaign's state from the store (the same view `pipeline status`
shows, so the driver's loop never waits on it) and draws one bar per running eval (all its shards
together) with a bar under it for each of its running shards (those on the GPUs now, not all 64),
one per training seed, and one for the campaign,
each with its ETA and dollars. When stdout is not a terminal (`ray job logs`) it prints one
progress line per minute instead.
"""

from __future__ import annotations

import os
import threading
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from pipeline.progress.render import bpb_text, duration, progress_line, shard_label, share, train_val, usd
from pipeline.progress.view import CampaignStatus, campaign_status
from pipeline.spec import CampaignSpec
from pipeline.store import Store

TTY_REFRESH_S = 5.0
LOG_EVERY_S = float(os.environ.get("PIPELINE_PROGRESS_EVERY_S", 60.0))  # a log line this often


class LiveProgress:
    def __init__(self, spec: CampaignSpec, store: Store, console: Console, log_every_s: float | None = None):
        self.spec, self.store, self.console = spec, store, console
        self.tty = console.is_terminal
        self.every_s = TTY_REFRESH_S if self.tty else (log_every_s or LOG_EVERY_S)
        self.run_id: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bars: Progress | None = None
        self._tasks: dict[str, int] = {}

    def start(self, run_id: str) -> None:
        self.run_id = run_id
        if self.tty:
            self._bars = Progress(
                TextColumn("{task.description}"), BarColumn(bar_width=28), TextColumn("{task.fields[pct]:>6}"),
                TextColumn("{task.fields[bpb]}"), TextColumn("ETA {task.fields[eta]}"), TextColumn("{task.fields[usd]}"),
                console=self.console, transient=True,
            )
            self._bars.start()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._bars is not None:
            self._bars.stop()

    def snapshot(self) -> CampaignStatus:
        return campaign_status(self.spec, self.store, live_run=self.run_id)

    def _loop(self) -> None:
        wait = 1.0 if self.tty else self.every_s
        while not self._stop.wait(wait):
            t0 = time.perf_counter()
            try:
                st = self.snapshot()
            except Exception as e:  # noqa: BLE001 - a store hiccup must not stop the campaign
                self.console.print(f"progress: could not read the store ({type(e).__name__})", markup=False)
                continue
            if self.tty:
                self._draw(st)
            else:
                self.console.print(progress_line(st), markup=False, highlight=False, soft_wrap=True)
            # a big store on S3 takes a while to read: spend at most a fifth of the time on it
            wait = max(self.every_s, 4 * (time.perf_counter() - t0))

    def _draw(self, st: CampaignStatus) -> None:
        bars = self._bars
        rows: dict[str, tuple[str, float, float, str, str, str]] = {
            "campaign": (
                "[bold]campaign[/]", sum(e.batches_done for e in st.evals), max(1, sum(e.batches or 0 for e in st.evals)),
                "", duration(st.eta_s), f"{usd(st.cost.total_usd)} spent, {usd(st.to_finish_usd)} to go",
            )
        }
        for t in st.trains:
            if t.state == "RUNNING":
                done, total = (t.steps or 0, t.planned_steps) if t.planned_steps else (0, 1)
                rows[f"train/{t.seed}"] = (f"train/{t.seed}", done, total, train_val(t) or "training", "—", usd(t.spent_usd))
        for e in st.evals:
            if e.state == "RUNNING" and e.batches:
                shards = f" ({e.running_units} shards)" if e.running_units > 1 else ""
                rows[f"{e.seed}/{e.recipe}"] = (
                    f"{e.seed}/{e.recipe}{shards}", e.batches_done, e.batches, bpb_text(e), duration(e.eta_s), usd(e.spent_usd),
                )
                for sh in e.shards:  # under its eval: one bar per running shard (a few per GPU node, not every shard)
                    rows[f"{e.seed}/{e.recipe}/{sh.shard}"] = (f"  {shard_label(sh)}", sh.done, sh.batches, "", "", "")
        if list(rows)[: len(self._tasks)] != list(self._tasks):  # rich draws in the order added: keep shards under their eval
            for key in list(self._tasks):
                bars.remove_task(self._tasks.pop(key))
        for key, (desc, done, total, bpb, eta, money) in rows.items():
            if key not in self._tasks:
                self._tasks[key] = bars.add_task(desc, total=total, bpb="", eta="", usd="", pct="")
            # rounded down (rich's own column rounds 99.6 % up to 100 %)
            bars.update(self._tasks[key], description=desc, completed=done, total=total, bpb=bpb, eta=eta, usd=money, pct=share(done, total, 0))
