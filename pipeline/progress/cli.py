"""`pipeline status`, `pipeline cost`, `pipeline compare`: read from the store alone, no Ray.

CAMPAIGN is a campaign file, or `STORE/NAME` (e.g. `s3://bucket/campaigns/golf` or a copy of a
store on a laptop: `./store-copy/demo`), whose spec is the one its newest driver run recorded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def resolve_campaign(arg: str):
    """(spec, store) of a campaign file or STORE/NAME; a one-line error naming what is missing."""
    from pipeline.run.setup import resolve_paths
    from pipeline.spec import load_spec, parse_spec
    from pipeline.store import Layout, normalize_uri, open_store

    if Path(arg).is_file():
        spec = resolve_paths(load_spec(arg))
        return spec, open_store(spec.store)
    uri, sep, name = arg.rstrip("/").rpartition("/")
    if not sep or not name:
        raise ValueError(f"{arg}: not a campaign file, nor STORE/NAME")
    store = open_store(normalize_uri(uri))
    store.check()
    runs = sorted(store.list(f"{name}/runs/"))
    if not runs:
        raise ValueError(f"{arg}: no driver run of campaign {name!r} is recorded in {store.uri} (pass the campaign file)")
    # the newest run's spec, taken as it was (a run id is random: order by when it started)
    newest = max((store.get_json(k) for k in runs), key=lambda r: r.get("start", 0.0))
    data = dict(newest["spec"], store=store.uri)
    spec = parse_spec(data, f"{store.uri}/{Layout(name).run(newest['run'])}")
    return spec, store


def live_driver(spec, store) -> tuple[str | None, str | None]:
    """(run id, description) of the driver that holds the campaign now, if one does."""
    from pipeline.run.setup import campaign_lease
    from pipeline.run.lease import LeaseUnreadable

    try:
        h = campaign_lease(store, spec).holder()
    except LeaseUnreadable as e:  # the campaign is still shown; what is running cannot be told
        return None, f"unknown: {e}"
    now = time.time()
    return (h.token, h.describe(now)) if h is not None and h.live(now) else (None, None)


def cmd_status(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from pipeline.progress.render import console as make_console, pods_table, status_lines, status_table
    from pipeline.progress.view import campaign_status

    spec, store = resolve_campaign(args.campaign)
    console = make_console()
    while True:
        run, who = live_driver(spec, store)
        st = campaign_status(spec, store, live_run=run)
        st.driver = who
        if args.pods:
            st.pods = pod_verdicts(st)
        if args.json:
            print(json.dumps(st.as_dict(), indent=1))
        else:
            if args.watch:
                console.clear()
            console.print(status_table(st))
            if (pt := pods_table(st)) is not None:
                console.print(pt)
            for line in status_lines(st):
                console.print(escape(line))
        if not args.watch:
            return 0
        time.sleep(args.watch)


def pod_verdicts(st) -> dict[str, str]:
    """RunPod's word on each pod of the cluster (dead, stopped, starting, alive), with Ray's last view."""
    from pipeline.pods.client import RunPodClient, RunPodError
    from pipeline.pods.health import RayNode, pod_health

    ray_nodes = {n.pod_id: RayNode(n.node_id, n.alive, n.gpus, n.gpus) for n in st.nodes if n.pod_id}
    try:
        by_id = {p.id: p for p in RunPodClient.from_env().list_pods()}
    except RunPodError as e:
        raise ValueError(f"--pods: {e}") from None
    out = {}
    for pod_id in ray_nodes:
        pod = by_id.get(pod_id)
        out[pod_id] = "dead (not in the account: terminated)" if pod is None else f"{pod_health(pod, ray_nodes).verdict.value} ({pod.status})"
    return out


def cmd_cost(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from pipeline.progress.render import console as make_console, cost_lines, cost_table
    from pipeline.progress.view import campaign_status

    spec, store = resolve_campaign(args.campaign)
    run, _ = live_driver(spec, store)
    cost = campaign_status(spec, store, live_run=run).cost
    if args.json:
        print(json.dumps(cost.as_dict(), indent=1))
        return 0
    console = make_console()
    console.print(cost_table(cost))
    for line in cost_lines(cost):
        console.print(escape(line))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pipeline.progress.compare import compare
    from pipeline.progress.render import compare_table, console

    spec, store = resolve_campaign(args.campaign)
    for name in (args.a, args.b):
        if name not in {e.name for e in spec.evals}:
            raise ValueError(f"{args.campaign}: evals: no eval recipe named {name!r}")
    if args.at is not None and not 0 < args.at <= 1:
        raise ValueError(f"--at {args.at}: must be in (0, 1]")
    cmp = compare(spec, store, args.a, args.b, args.at)
    if args.json:
        print(json.dumps(cmp.as_dict(), indent=1))
        return 0
    if not cmp.seeds:
        raise ValueError(f"{args.campaign}: no seed has batches of both {args.a} and {args.b} yet")
    console().print(compare_table(cmp))
    return 0


def register(sub) -> None:
    st = sub.add_parser("status", help="progress of a campaign, from its store: state, bpb so far with its interval, ETA, $")
    st.add_argument("campaign", help="campaign file, or STORE/NAME")
    st.add_argument("--watch", type=float, nargs="?", const=10.0, metavar="S", help="refresh every S seconds (default 10)")
    st.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    st.add_argument("--pods", action="store_true", help="also ask RunPod (RUNPOD_API_KEY) how each pod of the cluster is")
    st.set_defaults(func=cmd_status)

    c = sub.add_parser("cost", help="what a campaign cost: useful, lost and idle GPU time × price, per seed and recipe")
    c.add_argument("campaign", help="campaign file, or STORE/NAME")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cost)

    cp = sub.add_parser("compare", help="recipe A − recipe B, batch by batch, per seed and over seeds")
    cp.add_argument("campaign", help="campaign file, or STORE/NAME")
    cp.add_argument("a")
    cp.add_argument("b")
    cp.add_argument("--at", type=float, help="look at only this share of each shard's batches, as a run would have at that point")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_compare)
