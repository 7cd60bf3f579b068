"""`pipeline` command line: run a campaign, run one eval, validate a spec, prepare data.

Errors a user can fix (bad spec, missing file, bad store, changed campaign, a campaign another live
driver holds) print one line naming the file, field or holder and exit with status 2; a campaign
with failed units, or with units left PENDING after waiting in vain for GPUs, exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


from pipeline.run.setup import RAY_JOB_ENV_VAR, connect_ray



def _check_store_outlives_job(raw_store: str, source: str) -> None:
    """Under `ray job submit` the entrypoint's cwd is the job's unpacked working_dir, a temporary
    folder in the Ray session: a relative local store would be written there and lost."""
    if RAY_JOB_ENV_VAR not in os.environ or raw_store.startswith("s3://"):
        return
    path = raw_store[len("file://") :] if raw_store.startswith("file://") else raw_store
    if "://" not in path and not Path(path).expanduser().is_absolute():
        raise ValueError(
            f"{source}: store: {raw_store} is relative; under a Ray job it would live in the job's "
            "temporary working dir and vanish: use an absolute path or s3://"
        )


def cmd_run(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from pipeline.pods.campaign import CampaignPods
    from pipeline.records.artifacts import check_artifacts
    from pipeline.run.driver import Driver
    from pipeline.run.setup import resolve_paths
    from pipeline.progress.live import LiveProgress
    from pipeline.progress.render import console as make_console, cost_lines, cost_table
    from pipeline.progress.view import campaign_status
    from pipeline.spec import load_spec
    from pipeline.store import open_store
    from pipeline.progress.summary import build_summary, render_table, write_summary
    from workers.data import check_eval_inputs

    console = make_console()
    spec = load_spec(args.spec)
    _check_store_outlives_job(spec.store, args.spec)
    spec = resolve_paths(spec)
    for path, what in ((spec.data.shards, "data.shards"), (spec.data.tokenizer, "data.tokenizer")):
        if "://" not in path and not Path(path).exists():
            raise FileNotFoundError(f"{args.spec}: {what}: {path} does not exist")
    check_artifacts(spec, args.spec)
    open_store(spec.store).check()  # a bad store, data or tokenizer is one line, before anything is written
    # an eval-only campaign's vocabulary is its artifacts' (checked when each is loaded)
    check_eval_inputs(spec, spec.model.vocab_size if spec.artifacts is None else None, f"{args.spec}: model.vocab_size")
    timings: dict = {}

    def connect() -> None:
        t0 = time.perf_counter()
        connect_ray(spec, args.address, args.worker_logs)
        timings["ray_init_s"] = time.perf_counter() - t0

    console.print(f"campaign [bold]{spec.name}[/]: {len(spec.seeds)} seed(s) × train + {len(spec.evals)} eval(s), store {spec.store}")
    store = open_store(spec.store)
    live = LiveProgress(spec, store, console)
    report = Driver(spec, log=lambda m: console.print(escape(m)), connect=connect, take_over=args.take_over, progress=live,
                    pods=CampaignPods.for_cluster).run()  # the RunPod pods of the cluster, where it has any
    timings.update(run_wall_s=report.wall_s, units_s=report.durations)
    summary = build_summary(spec, open_store(spec.store), timings)
    out = write_summary(summary, args.results_dir or spec.results_dir)
    console.print(render_table(summary))
    cost = campaign_status(spec, store).cost
    console.print(cost_table(cost, detail=False))  # `pipeline cost` adds a row per seed and recipe
    for line in cost_lines(cost):
        console.print(escape(line))
    console.print(f"{report.ran()}, skipped {len(report.skipped)} already DONE, in {report.wall_s:.1f}s; summary: {out}")
    for what, why in report.estimated.items():
        console.print(f"[cyan]ESTIMATED[/] {what}: {escape(why)} (drop its stop_when and run again for the full number)")
    if report.budget:
        console.print(f"[yellow]PENDING[/] {escape(report.budget)}: raise budget_usd and run again to go on")
    for u, msg in report.failed.items():
        console.print(f"[red]FAILED[/] {u}: {escape(msg)}")
        for line in summary["failed"].get(u.id, {}).get("tail") or []:
            console.print(f"    {line}", markup=False, highlight=False)
    for what in report.waiting.values():
        console.print(f"[yellow]PENDING[/] {what}: gave up waiting; run again when the cluster has them")
    for u in report.blocked:
        console.print(f"[yellow]not run[/] {u}: its training did not finish")
    if report.lease_lost:
        console.print(f"[red]stopped[/]: the campaign was taken over by {report.lease_lost}")
    if report.failed or report.blocked or report.waiting or report.lease_lost or report.budget:
        return 1
    return 0


def _check_eval_unit(args: argparse.Namespace, spec) -> None:
    """Everything `pipeline eval` was asked, checked before its first write to the store: the seed and
    recipe are the spec's, the store answers, the seed's model is trained, the val shards, tokenizer
    and model agree (workers.data.check_eval_inputs), and --shard is one of the plan's shards (the
    stored plan's, or the one this command would write)."""
    from pipeline.records.artifacts import check_artifacts
    from pipeline.store import Layout, open_store
    from workers.data import check_eval_inputs
    from workers.plan import make_plan, plan_geometry

    if args.seed not in spec.seeds:
        raise ValueError(f"{args.spec}: seeds: --seed {args.seed} is not one of the campaign's seeds {spec.seeds}")
    if args.recipe not in {e.name for e in spec.evals}:
        raise ValueError(f"{args.spec}: evals: no eval recipe named {args.recipe!r}")
    if args.shard is not None and args.shard < 0:
        raise ValueError(f"--shard {args.shard}: must be >= 0")
    for path, what in ((spec.data.shards, "data.shards"), (spec.data.tokenizer, "data.tokenizer")):
        if not Path(path).exists():
            raise FileNotFoundError(f"{args.spec}: {what}: {path} does not exist")
    store, layout = open_store(spec.store), Layout(spec.name)
    store.check()
    manifest = layout.manifest(args.seed)
    if spec.artifacts is not None:  # eval-only: the artifact is imported after these checks
        check_artifacts(spec, args.spec)
        vocab = None  # the artifact's, checked when it is loaded
    elif not store.exists(manifest):
        raise ValueError(f"{store.uri}/{manifest}: not found: seed {args.seed} has no trained model (`pipeline run {args.spec}` trains it)")
    else:
        vocab = (store.get_json(manifest).get("config") or {}).get("vocab_size", spec.model.vocab_size)
    check_eval_inputs(spec, vocab, f"seed {args.seed}'s model vocab_size")
    if args.shard is not None:
        recipe, key = spec.eval_recipe(args.recipe), layout.plan(args.seed, args.recipe)
        if store.exists(key):
            n, where = len(store.get_json(key).get("shards") or []), f"{store.uri}/{key}"
        else:  # what run_shard would plan (default_shards 1): recipe.shards, at most one per batch; TTT: 1
            n, where = len(make_plan(args.seed, recipe, *plan_geometry(spec, recipe), recipe.shards or 1)["shards"]), "the plan it would write (evals.shards)"
        if args.shard >= n:
            raise ValueError(f"--shard {args.shard}: {args.recipe}: {where} has {n} shard(s), 0 to {n - 1}")


def cmd_eval(args: argparse.Namespace) -> int:
    """One eval unit in this process, no Ray: resumes from the store like a Ray task would."""
    from pipeline.records.artifacts import import_artifacts
    from pipeline.records.campaign import check_campaign
    from pipeline.run.setup import resolve_paths
    from pipeline.run.lease import Lease
    from pipeline.spec import load_spec
    from pipeline.store import Layout, open_store
    from workers.evaluate import run_eval, run_shard
    from workers.result import merge_result

    spec = resolve_paths(load_spec(args.spec))
    _check_eval_unit(args, spec)
    store, layout = open_store(spec.store), Layout(spec.name)
    check_campaign(spec, store)  # an eval under a changed spec must not write into the old campaign
    import_artifacts(spec, store)  # eval-only: the seed's artifact becomes its committed training
    # One `pipeline eval` per unit; a driver's attempts of the same unit may still run beside it
    # (attempts are fenced, so any mix of them gives the same number).
    where = layout.eval_dir(args.seed, args.recipe) if args.shard is None else layout.shard_dir(args.seed, args.recipe, args.shard)
    unit = f"eval seed {args.seed} {args.recipe}" + ("" if args.shard is None else f" shard {args.shard}")
    with Lease(store, f"{where}/lease", f"{unit} in {store.uri}", "pipeline eval") as lease:
        lease.acquire(args.take_over)
        lease.start_heartbeat()
        store.clean_tmp(where)  # what interrupted writes of an earlier `pipeline eval` left
        if args.shard is None:
            r = run_eval(spec, args.seed, args.recipe, spec.store)
        else:
            run_shard(spec, args.seed, args.recipe, spec.store, args.shard)
            r = merge_result(store, layout, args.seed, spec.eval_recipe(args.recipe))
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
    from pipeline.records.artifacts import check_artifacts
    from pipeline.run.setup import resolve_paths
    from pipeline.spec import ScriptTrain, load_spec

    spec = load_spec(args.spec)
    if not args.spec_only:  # what `run` reads on this machine before it starts: the script, the artifacts
        local = resolve_paths(spec)
        if isinstance(local.train, ScriptTrain) and not local.train.script_file().is_file():
            raise FileNotFoundError(f"{args.spec}: train.script: {local.train.script_file()} does not exist (--spec-only: check the file alone)")
        check_artifacts(local, args.spec)
    print(f"{args.spec}: ok ({spec.name}, {len(spec.seeds)} seeds, {len(spec.evals)} evals, fingerprint {spec.fingerprint()[:12]})")
    for e in spec.evals:  # legality is read off each recipe's definition (docs/recipes.md: Legality)
        print(f"  {e.name}: {e.legality.label} ({e.legality.why})")
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
    r.add_argument("--take-over", action="store_true", help="take the campaign from a driver whose lease has expired")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="run or resume one eval unit in this process (no Ray)")
    e.add_argument("spec")
    e.add_argument("--seed", type=int, required=True)
    e.add_argument("--recipe", required=True)
    e.add_argument("--shard", type=int, help="only this shard of the plan (default: every shard, in turn)")
    e.add_argument("--take-over", action="store_true", help="take the unit from a `pipeline eval` whose lease has expired")
    e.set_defaults(func=cmd_eval)

    v = sub.add_parser("validate", help="check a campaign file, its script and its artifacts")
    v.add_argument("spec")
    v.add_argument("--spec-only", action="store_true", help="the file alone, not the script or artifacts it names (a campaign for another machine)")
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

    from pipeline.progress.cli import register as add_progress_parsers  # status, cost, compare

    add_progress_parsers(sub)
    from pipeline.report.cli import register as add_report_parser  # report (docs/reports.md: Reports)

    add_report_parser(sub)
    from pipeline.logs import register as add_logs_parser  # a script training's output

    add_logs_parser(sub)
    from pipeline.plan.cli import register as add_plan_parser  # what a campaign will cost (docs/plan.md: Planning)

    add_plan_parser(sub)
    from pipeline.pods.cli import add_pods_parser  # RunPod pods (docs/pods.md: Pods)

    add_pods_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline.records.campaign import CampaignChanged
    from pipeline.run.lease import LeaseHeld
    from pipeline.spec import SpecError
    from pipeline.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, CampaignChanged, LeaseHeld, StoreError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
