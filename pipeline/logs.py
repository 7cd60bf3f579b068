"""`pipeline logs CAMPAIGN --seed S`: a script training's output from the store (README: Bring your
own train_gpt.py), the whole log so far of one rank of one attempt; `--follow` prints what the
running script adds until the seed's training commits or fails. Reads the store alone."""

from __future__ import annotations

import argparse
import sys
import time


def cmd_logs(args: argparse.Namespace) -> int:
    from pipeline.progress.cli import resolve_campaign
    from pipeline.spec import ScriptTrain
    from pipeline.store import Layout
    from workers.script_train import attempts

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
    are written once, in order: workers/script_train.py LogSink) and fetches those, so following a
    long run costs what it adds, not its whole log every few seconds. Without a fixed `attempt` it
    follows the seed's committed or newest attempt, and a restart's log follows the last one's
    (looked for only when a poll found nothing new: finding it lists the seed's training folder)."""

    def __init__(self, store, layout, seed: int, attempt: str | None = None, rank: int = 0):
        self.store, self.layout, self.seed, self.rank = store, layout, seed, rank
        self.fixed, self.attempt = attempt, attempt
        self.last: str | None = None  # the last chunk read
        self.stalled = True  # the last poll added nothing

    def poll(self) -> str:
        from workers.script_train import current_attempt

        attempt = self.attempt
        if self.fixed is None and (self.stalled or attempt is None):
            attempt = current_attempt(self.store, self.layout, self.seed)
        header = ""
        if attempt != self.attempt:
            if self.attempt is not None:
                header = f"--- attempt {attempt} (the seed's training started again) ---\n"
            self.attempt, self.last = attempt, None
        if attempt is None:
            return ""
        prefix = self.layout.script_log(self.seed, attempt, self.rank)
        keys = [k for k in self.store.list(prefix, start_after=self.last) if k.endswith(".txt")]
        self.stalled = not keys
        if keys:
            self.last = keys[-1]
        return header + "".join(b.decode("utf-8", "replace") for b in self.store.get_many(keys))


class TrainingEnd:
    """Whether the seed's training has ended: committed, or FAILED in the ledger. The ledger is read
    whole once, then only from a minute before the last look."""

    def __init__(self, store, layout, seed: int):
        from pipeline.ledger import Ledger

        self.store, self.layout, self.seed = store, layout, seed
        self.ledger = Ledger(store, layout, "logs")
        self.since: float | None = None

    def now(self) -> bool:
        from pipeline.ledger import latest_states

        if self.store.exists(self.layout.manifest(self.seed)):
            return True
        looked = time.time()
        events = [e for e in self.ledger.events(self.since) if e.get("unit") == f"train/{self.seed}" and e.get("event") == "state"]
        self.since = looked - 60.0
        state = latest_states(events).get(f"train/{self.seed}")
        return state is not None and state["state"] == "FAILED"


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
