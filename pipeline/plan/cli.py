"""`pipeline plan SPEC`: predicted makespan, GPU-hours, $ (useful and idle) and GPU utilisation of a
campaign on each pod mix, the cheapest one meeting --deadline and --budget marked
(docs/plan.md). It reads the spec, the val set's size and the throughput table, and starts nothing;
`--calibrate` measures the table first (a short run on this cluster), `--from STORE/NAME` reads it
from an earlier run's ledger, `--compare` puts that run's measured figures beside the prediction.
Bad input (an unknown GPU type, a mix some unit cannot run on, a deadline or budget no mix meets,
a corrupt table) is one line and exit 2, with nothing written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_POD_START_S = 180.0  # renting a RunPod pod to its Ray node taking work: boot, setup_commands, ray start


def _spec(arg: str):
    from pipeline.run.setup import resolve_paths
    from pipeline.spec import load_spec

    return resolve_paths(load_spec(arg))


def _work(spec, args):
    from pipeline.plan.work import campaign_work

    if args.val_tokens is None and "://" not in spec.data.shards and not Path(spec.data.shards).is_dir():
        raise FileNotFoundError(f"{args.spec}: data.shards: {spec.data.shards} is not on this machine; "
                                "--val-tokens N plans with the val set's token count instead")
    return campaign_work(spec, args.val_tokens)


def _mixes(spec, args):
    from pipeline.plan.mixes import Prices, default_mixes, parse_mix, parse_price

    prices = Prices(dict(parse_price(p) for p in args.price or []), spec.cluster.pricing)
    local = spec.cluster.accelerator == "cpu" and spec.cluster.address is None
    start = args.pod_start_s if args.pod_start_s is not None else (0.0 if local else DEFAULT_POD_START_S)
    if args.pods:
        return [parse_mix(m, prices, start) for m in args.pods]
    return default_mixes(spec, prices, Path(args.cluster_yaml), start)


def _table(spec, args):
    """(table, where it came from). --calibrate measures and writes it; --from reads a ledger."""
    from pipeline.plan.throughput import load_table, table_from_store, table_path

    path = Path(args.table) if args.table else table_path(args.spec)
    if args.calibrate:
        return None, path  # measured once every other input is checked
    if args.from_ and not (args.compare and path.exists()):
        from pipeline.progress.cli import resolve_campaign

        _, store = resolve_campaign(args.from_)
        return table_from_store(spec, store, args.from_), args.from_
    return load_table(path), path


def _fastest(results):
    return min(results, key=lambda r: r.makespan_s)


def choose(results, deadline_h: float | None, budget: float | None):
    """The cheapest result meeting the deadline and the budget; a one-line ValueError naming the
    fastest (or the cheapest) when none does."""
    ok = [r for r in results if deadline_h is None or r.makespan_s <= deadline_h * 3600.0]
    if not ok:
        f = _fastest(results)
        raise ValueError(f"--deadline {deadline_h:g} h: no mix meets it; the fastest is {f.mix.name} at {f.makespan_s / 3600.0:.2f} h")
    within = [r for r in ok if budget is None or r.total_usd <= budget]
    if not within:
        c = min(ok, key=lambda r: r.total_usd)
        raise ValueError(f"--budget {budget:g} USD: no mix meets it{' by the deadline' if deadline_h else ''}; "
                         f"the cheapest is {c.mix.name} at ${c.total_usd:.2f}")
    return min(within, key=lambda r: (r.total_usd, r.makespan_s))


def cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.plan.render import compare_table, plan_table
    from pipeline.plan.simulate import Durations, check_fits, simulate
    from pipeline.plan.throughput import write_table
    from pipeline.progress.render import console as make_console

    console = make_console()
    if args.compare and not args.from_:
        raise ValueError("--compare: needs --from STORE/NAME (the run to compare with)")
    if args.deaths_per_hour < 0 or (args.deadline is not None and args.deadline <= 0) or (args.budget is not None and args.budget < 0):
        raise ValueError("--deaths-per-hour, --deadline and --budget must be positive")
    spec = _spec(args.spec)
    work = _work(spec, args)
    mixes = _mixes(spec, args)
    table, source = _table(spec, args)
    if table is not None:
        _check_figures(Durations(spec, work, table), mixes, args.spec)
    for m in mixes:  # a mix some unit can never run on is refused before anything is measured
        check_fits(spec, m)
    if args.calibrate:
        from pipeline.plan.calibrate import calibrate

        table = calibrate(spec, work.val_tokens, lambda m: console.print(m) if not args.json else None)
        _check_figures(Durations(spec, work, table), mixes, args.spec)
    durations = Durations(spec, work, table, args.deaths_per_hour)
    results = [simulate(spec, work, m, durations) for m in mixes]
    measured = None
    if args.compare:
        from pipeline.plan.compare import measured_run
        from pipeline.progress.cli import resolve_campaign

        _, store = resolve_campaign(args.from_)
        measured = measured_run(spec, store)
        _check_figures(durations, [measured.mix], args.spec)
        on_run = simulate(spec, work, measured.mix, durations)
    best = choose(results, args.deadline, args.budget)
    if args.calibrate:
        source = write_table(table, source)
    cmp = None
    if measured is not None:
        from pipeline.plan.compare import comparison, write_comparison

        cmp = comparison(on_run, measured)
        cmp["written"] = str(write_comparison(spec, cmp))
    if args.json:
        print(json.dumps({"campaign": spec.name, "work": work.as_dict(), "throughput": str(source),
                          "mixes": [r.as_dict() for r in results], "best": best.mix.name, "compare": cmp}, indent=1))
        return 0
    console.print(f"campaign [bold]{spec.name}[/]: {len(work.seeds)} seed(s); throughput from {source}")
    for line in _work_lines(work):
        console.print(line, markup=False)
    console.print(plan_table(results, best))
    for line in sorted({p for r in results for p in r.as_dict()["prices"]}):
        console.print(f"price: {line}", markup=False)
    if cmp is not None:
        console.print(compare_table(cmp))
        console.print(f"written: {cmp['written']} (pipeline report includes it)", markup=False)
    return 0


def _check_figures(durations, mixes, spec_file: str) -> None:
    from pipeline.plan.simulate import gpu_types

    lack = durations.missing(set().union(*(gpu_types(m) for m in mixes)))
    if lack:
        raise ValueError(f"no throughput figure for {'; '.join(lack)} (measure: pipeline plan {spec_file} --calibrate on that GPU, "
                         "or --from STORE/NAME of a run there)")


def _work_lines(work) -> list[str]:
    out = []
    if work.train is not None:
        t = work.train
        steps = "its script's steps" if t.max_steps is None else f"≤ {t.max_steps:,} steps"
        out.append(f"  train: {steps} or {t.max_wallclock_s:g} s per seed on {t.gpus:g} GPUs (one node)")
    for r in work.recipes:
        extra = [f"SLOT {r.slot_steps} steps/batch"] if r.slot_steps else []
        if r.ttt_epochs:
            extra.append(f"TTT {r.ttt_epochs} epochs × {r.ttt_chunks} chunks")
        shards = "1 unit" if not r.shardable else (f"{r.shards} shards" if r.shards else "a shard per GPU")
        out.append(f"  {r.name}: {r.windows:,} windows, {r.batches:,} batches, {shards} on {r.gpus} GPU(s) each"
                   + (f"; {', '.join(extra)}" if extra else ""))
    return out


def register(sub) -> None:
    p = sub.add_parser("plan", help="predicted time and $ of a campaign on pod mixes, before renting them")
    p.add_argument("spec", help="campaign YAML file")
    p.add_argument("--pods", action="append", metavar="MIX", help="a pod mix, e.g. 1x8xH100+4x1xH100 (repeat; default: from cluster.yaml)")
    p.add_argument("--deadline", type=float, metavar="H", help="hours the campaign must finish in")
    p.add_argument("--budget", type=float, metavar="USD", help="dollars it must cost at most")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p.add_argument("--calibrate", action="store_true", help="measure the throughput table first (a short run on this cluster)")
    p.add_argument("--from", dest="from_", metavar="STORE/NAME", help="take the throughput from an earlier campaign's ledger")
    p.add_argument("--compare", action="store_true", help="with --from: the prediction beside what that run measured")
    p.add_argument("--table", help="throughput table file (default: beside the spec, SPEC.throughput.json)")
    p.add_argument("--val-tokens", type=int, help="the val set's token count, where its shards are not on this machine")
    p.add_argument("--price", action="append", metavar="TYPE=USD", help="$ per GPU-hour of a GPU type (default: the spec's, then list prices)")
    p.add_argument("--pod-start-s", type=float, help=f"seconds from renting a pod to its first unit (default {DEFAULT_POD_START_S:g}; 0 locally)")
    p.add_argument("--deaths-per-hour", type=float, default=0.0, help="expected pod deaths per GPU-hour a unit holds (default 0)")
    p.add_argument("--cluster-yaml", default="cluster.yaml", help="node types for the default mixes")
    p.set_defaults(func=cmd_plan)
