"""`pipeline` command line: run a campaign, run one eval, validate a spec, prepare data.

Errors a user can fix (bad spec, missing file, changed campaign) print one line naming the file or
field and exit with status 2; a campaign with failed units exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _connect_ray(spec, address: str | None, worker_logs: bool) -> None:
    import ray

    if ray.is_initialized():  # embedded use (tests, notebooks): join what is there
        return
    address = address or spec.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=worker_logs)
    else:
        local = spec.cluster.local
        ray.init(
            address="local",  # a new instance: joining another cluster is asked for explicitly
            num_cpus=local.num_cpus,
            num_gpus=local.num_gpus,
            include_dashboard=False,
            log_to_driver=worker_logs,
            logging_level="WARNING",
        )


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipeline.driver import Driver, resolve_paths
    from pipeline.spec import load_spec
    from pipeline.store import open_store
    from pipeline.summary import build_summary, render_table, write_summary

    console = Console(highlight=False)
    spec = resolve_paths(load_spec(args.spec))
    for path, what in ((spec.data.shards, "data.shards"), (spec.data.tokenizer, "data.tokenizer")):
        if "://" not in path and not Path(path).exists():
            raise FileNotFoundError(f"{args.spec}: {what}: {path} does not exist")
    timings: dict = {}

    def connect() -> None:
        t0 = time.perf_counter()
        _connect_ray(spec, args.address, args.worker_logs)
        timings["ray_init_s"] = time.perf_counter() - t0

    console.print(f"campaign [bold]{spec.name}[/]: {len(spec.seeds)} seed(s) × train + {len(spec.evals)} eval(s), store {spec.store}")
    report = Driver(spec, log=console.print, connect=connect).run()
    timings.update(run_wall_s=report.wall_s, units_s=report.durations)
    summary = build_summary(spec, open_store(spec.store), timings)
    out = write_summary(summary, args.results_dir or spec.results_dir)
    console.print(render_table(summary))
    console.print(f"ran {len(report.done)} unit(s), skipped {len(report.skipped)} already DONE, in {report.wall_s:.1f}s; summary: {out}")
    if report.failed or report.blocked:
        for u, msg in report.failed.items():
            console.print(f"[red]FAILED[/] {u}: {msg}")
        for u in report.blocked:
            console.print(f"[yellow]not run[/] {u}: its training did not finish")
        return 1
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """One eval unit in this process, no Ray: resumes from the store like a Ray task would."""
    from pipeline.driver import resolve_paths
    from pipeline.spec import load_spec
    from pipeline.store import Layout, open_store
    from workers.evaluate import run_eval, run_shard
    from workers.result import merge_result

    spec = resolve_paths(load_spec(args.spec))
    if args.recipe not in {e.name for e in spec.evals}:
        raise ValueError(f"{args.spec}: no eval recipe named {args.recipe!r}")
    if args.shard is None:
        r = run_eval(spec, args.seed, args.recipe, spec.store)
    else:
        run_shard(spec, args.seed, args.recipe, spec.store, args.shard)
        r = merge_result(open_store(spec.store), Layout(spec.name), args.seed, spec.eval_recipe(args.recipe))
        if r is None:
            print(f"seed {args.seed} {args.recipe}: shard {args.shard} done; other shards are still missing")
            return 0
    run = r["run"]
    print(
        f"seed {args.seed} {args.recipe}: val_bpb {r['val_bpb']:.8f} val_loss {r['val_loss']:.8f} "
        f"({r['tokens']:,} tokens, {r['bytes']:,} bytes, {r['windows']:,} windows; "
        f"resumed {run['resumed_batches']} of {r['batches']} batches, {run['wall_s']:.1f}s)"
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.spec import load_spec

    spec = load_spec(args.spec)
    print(f"{args.spec}: ok ({spec.name}, {len(spec.seeds)} seeds, {len(spec.evals)} evals, fingerprint {spec.fingerprint()[:12]})")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from workers.prepare import prepare

    info = prepare(args.text, args.vocab, args.out, val_fraction=args.val_fraction, shard_tokens=args.shard_tokens)
    print(
        f"{info['documents']} documents → {info['tokens']['train']:,} train / {info['tokens']['val']:,} val tokens "
        f"in {args.out} (tokenizer {info['tokenizer']})"
    )
    return 0


def cmd_data_stdlib(args: argparse.Namespace) -> int:
    from workers.prepare import write_stdlib_corpus

    n = write_stdlib_corpus(args.out)
    print(f"{n} standard-library docstrings → {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run (or resume) a campaign")
    r.add_argument("spec", help="campaign YAML file")
    r.add_argument("--address", help="Ray address (default: RAY_ADDRESS, cluster.address, or a local instance)")
    r.add_argument("--results-dir", help="override the spec's results_dir")
    r.add_argument("--worker-logs", action="store_true", help="stream Ray worker logs to this terminal")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="run or resume one eval unit in this process (no Ray)")
    e.add_argument("spec")
    e.add_argument("--seed", type=int, required=True)
    e.add_argument("--recipe", required=True)
    e.add_argument("--shard", type=int, help="only this shard of the plan (default: every shard, in turn)")
    e.set_defaults(func=cmd_eval)

    v = sub.add_parser("validate", help="check a campaign file")
    v.add_argument("spec")
    v.set_defaults(func=cmd_validate)

    d = sub.add_parser("data", help="prepare tokenizer and shards").add_subparsers(dest="data_command", required=True)
    dp = d.add_parser("prepare", help="train a sentencepiece BPE and write train/val shards")
    dp.add_argument("--text", nargs="+", required=True, help=".jsonl files ({'text': ...} per line) or text files (one document each)")
    dp.add_argument("--vocab", type=int, required=True, help="vocabulary size")
    dp.add_argument("--out", required=True, help="output directory")
    dp.add_argument("--val-fraction", type=float, default=0.1)
    dp.add_argument("--shard-tokens", type=int, default=100_000_000)
    dp.set_defaults(func=cmd_data_prepare)
    ds = d.add_parser("stdlib-corpus", help="write this Python's standard-library docstrings as a .jsonl corpus")
    ds.add_argument("--out", required=True)
    ds.set_defaults(func=cmd_data_stdlib)
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline.driver import CampaignChanged
    from pipeline.spec import SpecError
    from pipeline.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, CampaignChanged, StoreError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
