"""`pipeline logs CAMPAIGN --seed S`: a script training's output from the store (docs/scripts.md
"Bring your own train_gpt.py"), the whole log so far of one rank of one attempt; `--follow` prints what the
running script adds until the seed's training commits or fails. Reads the store alone."""

from __future__ import annotations

import argparse
import sys
import time


def cmd_logs(args: argparse.Namespace) -> int:
    from pipeline.progress.cli import resolve_campaign
    from pipeline.spec import ScriptTrain
    from pipeline.store import Layout
    from workers.script_logs import attempts

    spec, store = resolve_campaign(args.campaign)
    if not isinstance(spec.train, ScriptTrain):
        raise ValueError(f"{args.campaign}: train.kind is not script; its training log is seeds/<seed>/train/metrics-<attempt>.json")
    if args.seed not in spec.seeds:
        raise ValueError(f"--seed: {args.seed} is not a seed of {spec.name} ({spec.seeds})")
    layout = Layout(spec.name)
    if args.list:
        for t, a in attempts(store, layout, args.seed):
            print(f"{a}  started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))}")
        return 0
    follow = LogFollower(store, layout, args.seed, args.attempt, args.rank)
    ended = TrainingEnd(store, layout, args.seed)
    while True:
        text = follow.poll()
        if follow.attempt is None:
            print(f"seed {args.seed}: no attempt of its script has started yet", file=sys.stderr)
        sys.stdout.write(text)
        sys.stdout.flush()
        if not args.follow or ended.now():
            if args.follow:
                sys.stdout.write(follow.poll())  # what the last chunks added before the end
            return 0
        time.sleep(args.every)


class LogFollower:
    """One rank's log as it grows: each poll lists only the chunks after the last one read (chunks
    are written once, in order: workers/script_logs.py LogSink) and fetches those, so following a
    long run costs what it adds, not its whole log every few seconds. Without a fixed `attempt` it
    follows the seed's committed or newest attempt, and a restart's log follows the last one's.
    A restart is looked for only when a poll found nothing new, at most every `look_every_s`:
    finding it lists the seed's whole training folder."""

    def __init__(self, store, layout, seed: int, attempt: str | None = None, rank: int = 0, look_every_s: float = 30.0):
        self.store, self.layout, self.seed, self.rank = store, layout, seed, rank
        self.fixed, self.attempt = attempt, attempt
        self.look_every_s, self.looked = look_every_s, -1e18
        self.last: str | None = None  # the last chunk read
        self.stalled = True  # the last poll added nothing

    def poll(self) -> str:
        from workers.script_logs import current_attempt

        attempt, now = self.attempt, time.monotonic()
        if self.fixed is None and (attempt is None or (self.stalled and now - self.looked >= self.look_every_s)):
            self.looked = now
            attempt = current_attempt(self.store, self.layout, self.seed)
        out = ""
        if attempt != self.attempt:
            if self.attempt is not None:  # what the old attempt wrote last (its traceback), then the new one
                out = self._read() + f"--- attempt {attempt} (the seed's training started again) ---\n"
            self.attempt, self.last = attempt, None
        if attempt is None:
            return out
        text = self._read()
        self.stalled = not text
        return out + text

    def _read(self) -> str:
        from workers.script_logs import read_chunks

        text, self.last = read_chunks(self.store, self.layout.script_log(self.seed, self.attempt, self.rank), self.last)
        return text


class TrainingEnd:
    """Whether the seed's training has ended: committed, or FAILED in the ledger. The ledger is read
    whole at first and every `whole_every_s`, in between only from a minute before the newest event
    seen: the driver's clock, not ours, which may differ."""

    def __init__(self, store, layout, seed: int, whole_every_s: float = 300.0):
        from pipeline.records.ledger import Ledger

        self.store, self.unit, self.manifest = store, f"train/{seed}", layout.manifest(seed)
        self.ledger = Ledger(store, layout, "logs")
        self.whole_every_s, self.whole_at = whole_every_s, -1e18
        self.newest: float | None = None  # the newest event's time seen (the driver's clock)
        self.state: str | None = None

    def now(self) -> bool:
        if self.store.exists(self.manifest):
            return True
        t = time.monotonic()
        whole = self.newest is None or t - self.whole_at >= self.whole_every_s
        if whole:
            self.whole_at = t
        events = self.ledger.events(None if whole else self.newest - 60.0)
        if events:
            self.newest = max(self.newest or 0.0, events[-1].get("time", 0.0))
        for e in events:  # time order: the last state event of the unit wins
            if e.get("unit") == self.unit and e.get("event") == "state":
                self.state = e["state"]
        return self.state == "FAILED"


def register(sub) -> None:
    lg = sub.add_parser("logs", help="a script training's output (train.kind: script), from the store")
    lg.add_argument("campaign", help="campaign file, or STORE/NAME")
    lg.add_argument("--seed", type=int, required=True)
    lg.add_argument("--rank", type=int, default=0, help="whose output (default 0, where the records print)")
    lg.add_argument("--attempt", help="which attempt (default: the committed one, else the newest)")
    lg.add_argument("--list", action="store_true", help="list the seed's attempts instead")
    lg.add_argument("--follow", action="store_true", help="keep printing until the training commits or fails")
    lg.add_argument("--every", type=float, default=2.0, help=argparse.SUPPRESS)
    lg.set_defaults(func=cmd_logs)
