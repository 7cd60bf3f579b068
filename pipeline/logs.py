"""`pipeline logs CAMPAIGN --seed S`: a script training's output from the store (README: Bring your
own train_gpt.py), the whole log so far of one rank of one attempt; `--follow` prints what the
running script adds until the seed's training commits or fails. Reads the store alone."""

from __future__ import annotations

import argparse
import sys
import time


def cmd_logs(args: argparse.Namespace) -> int:
    from pipeline.ledger import Ledger
    from pipeline.progress.cli import resolve_campaign
    from pipeline.spec import ScriptTrain
    from pipeline.store import Layout
    from workers.script_train import attempts, read_log

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
    shown = 0
    while True:
        attempt, text = read_log(store, layout, args.seed, args.attempt, args.rank)
        if attempt is None:
            print(f"seed {args.seed}: no attempt of its script has started yet", file=sys.stderr)
        sys.stdout.write(text[shown:])
        sys.stdout.flush()
        shown = len(text)
        if not args.follow:
            return 0
        failed = Ledger(store, layout, "logs").failed()
        if store.exists(layout.manifest(args.seed)) or f"train/{args.seed}" in failed:
            return 0
        time.sleep(args.every)


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
