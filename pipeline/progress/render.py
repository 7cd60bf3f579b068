"""Tables and one-line summaries of status, cost and comparisons, for a terminal or a log."""

from __future__ import annotations

import math
import sys

from rich.console import Console
from rich.table import Table

from pipeline.progress.compare import Comparison
from pipeline.progress.cost import CostReport
from pipeline.progress.estimators import MIN_INTERVAL_BATCHES
from pipeline.progress.view import CampaignStatus, EvalStatus


def console() -> Console:
    """A terminal's own width; 160 columns in a log or a pipe (rich would wrap tables at 80)."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def duration(s: float | None) -> str:
    if s is None:
        return "—"
    s = int(math.ceil(s))  # work left never shows as 0 s
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def share(done: float, total: float, places: int = 1) -> str:
    """done/total as a percentage rounded down: 100 % only when all of it is done (999 of 1,000
    batches is 99.9 %, never a 100 % that hides a lost shard)."""
    if not total:
        return ""
    scale = 10**places
    pct = math.floor(done / total * 100 * scale) / scale
    return f"{pct:.{places}f}%"


def usd(v: float | None) -> str:
    return "—" if v is None else f"${v:,.2f}"


def bpb_text(e: EvalStatus) -> str:
    """Never a bare number for an unfinished eval: an interval, or a prefix said to be one."""
    if e.final_bpb is not None:
        return f"{e.final_bpb:.6f}"
    est = e.estimate
    if est is None or est.n == 0:
        return "—"
    if not est.sample:
        return f"{est.value:.5f} (prefix, {est.done:.0%} of val; no interval)"
    if est.half_width is None:
        return f"~{est.value:.4f} ({est.n} batch{'es' if est.n > 1 else ''}: no interval below {MIN_INTERVAL_BATCHES})"
    return f"{est.value:.5f} ± {est.half_width:.5f}"


def train_steps(tr) -> str:
    if tr.steps is None:
        return ""
    return f"step {tr.steps}/{tr.planned_steps}" if tr.planned_steps else f"{tr.steps} steps"


def train_val(tr) -> str:
    v = tr.last_val
    return f"val {v['val_bpb']:.4f} @ step {v['step']}" if v and v.get("val_bpb") is not None else ""


def status_table(st: CampaignStatus) -> Table:
    t = Table(title=f"{st.name} — {st.store}", title_justify="left")
    for col in ("seed", "recipe", "state", "done", "val_bpb (95 %)", "windows/s", "ETA", "spent", "to finish"):
        t.add_column(col, justify="right" if col in ("seed", "done", "windows/s", "ETA", "spent", "to finish") else "left")
    for tr in st.trains:
        t.add_row(str(tr.seed), "train", tr.state, train_steps(tr), train_val(tr), "", "", usd(tr.spent_usd), "")
    for e in st.evals:
        done = share(e.batches_done, e.batches or 0)
        wps = f"{e.windows_per_s:,.1f}" if e.windows_per_s else "—"
        state = e.state + (f" ({e.running_units})" if e.running_units > 1 else "") + (f", {e.lost_units} lost" if e.lost_units else "")
        t.add_row(str(e.seed), e.recipe, state, done, bpb_text(e), wps, duration(e.eta_s), usd(e.spent_usd), usd(e.to_finish_usd))
        for sh in e.shards:  # a bar per running shard: the one a lost or slow node holds back shows
            t.add_row("", shard_label(sh), "LOST" if sh.lost else "RUNNING", f"{bar(sh.done, sh.batches)} {share(sh.done, sh.batches)}",
                      "", "", "", "", "")
    return t


def shard_label(sh) -> str:
    return f"└ shard {sh.shard}" + (" (re-placing)" if sh.lost else "")


def bar(done: int, total: int, width: int = 10) -> str:
    """A text bar, rounded down like `share`: full only when all of it is done."""
    filled = width * done // total if total else 0
    return "█" * filled + "░" * (width - filled)


def pods_table(st: CampaignStatus) -> Table | None:
    """The pods of the cluster as the driver last saw them (Ray's view), and RunPod's verdict where
    it was asked (`--pods`)."""
    pods = [n for n in st.nodes if n.pod_id]
    if not pods:
        return None
    t = Table(title="pods", title_justify="left")
    for col in ("pod", "GPUs", "type", "$/h", "Ray node", "RunPod"):
        t.add_column(col)
    for n in pods:
        ray_state = "alive" if n.alive else "[red]gone[/]: its units went back to PENDING"
        t.add_row(n.pod_id, f"{n.gpus:g}", n.gpu_type, f"{n.usd_per_gpu_hour * n.gpus:.2f}", ray_state, st.pods.get(n.pod_id, "—"))
    return t


def status_lines(st: CampaignStatus) -> list[str]:
    """What waits and why, what failed and with what: the lines under the table."""
    out = []
    if st.driver:
        out.append(f"driver: {st.driver}")
    out.append(
        f"campaign: {share(st.done, 1)} of eval batches done, ETA {duration(st.eta_s)}, {usd(st.cost.total_usd)} spent"
        f" ({usd(st.cost.idle_usd)} idle, {usd(st.cost.campaign.lost_usd)} lost), {usd(st.to_finish_usd)} to finish"
    )
    out += [f"waiting: {w}" for w in st.waiting.values()]
    out += [f"FAILED {u}: {msg}" for u, msg in st.failed.items()]
    out += [f"UNREADABLE train/{t.seed}: {t.error}" for t in st.trains if t.state == "UNREADABLE"]
    return out


def progress_line(st: CampaignStatus) -> str:
    """One line for a log (`ray job logs`): the campaign, then each running eval."""
    run = [e for e in st.evals if e.state == "RUNNING"]
    trains = [t for t in st.trains if t.state == "RUNNING"]
    parts = [f"progress {share(st.done, 1)} of eval batches, ETA {duration(st.eta_s)}, {usd(st.cost.total_usd)} spent, {usd(st.to_finish_usd)} to finish"]
    parts += [f"train/{t.seed} {train_steps(t) or 'running'}" + (f" {train_val(t)}" if train_val(t) else "") for t in trains]
    parts += [f"{e.seed}/{e.recipe} {share(e.batches_done, e.batches, 0)} bpb {bpb_text(e)} ETA {duration(e.eta_s)}" for e in run if e.batches]
    return "; ".join(parts)


def cost_table(c: CostReport, detail: bool = True) -> Table:
    """Per recipe and per seed; `detail` adds a row per (seed, recipe)."""
    t = Table(title="cost (GPU-hours × price)", title_justify="left", caption="campaign = every watched node's time at its price, idle included", caption_justify="left")
    for col in ("seed", "recipe", "attempts", "GPU-h", "useful", "lost", "total"):
        t.add_column(col, justify="left" if col in ("seed", "recipe") else "right")

    def row(seed: str, recipe: str, line) -> None:
        lost = usd(line.lost_usd) if line.lost_usd < 0.005 else f"[yellow]{usd(line.lost_usd)}[/]"
        t.add_row(seed, recipe, str(line.attempts), f"{line.gpu_s / 3600:.3f}", usd(line.useful_usd), lost, usd(line.usd))

    if detail:
        for (seed, recipe), line in sorted(c.by_seed_recipe.items()):
            row(str(seed), recipe, line)
    for recipe, line in sorted(c.by_recipe.items()):
        row("all", recipe, line)
    for seed, line in sorted(c.by_seed.items()):
        row(str(seed), "all", line)
    row("all", "[bold]units[/]", c.campaign)
    if c.idle_usd is not None:
        t.add_row("all", "[yellow]idle nodes[/]", "", "", "", "", usd(c.idle_usd))
    t.add_row("all", "[bold]campaign[/]", "", "", "", "", f"[bold]{usd(c.total_usd)}[/]")
    return t


def cost_lines(c: CostReport) -> list[str]:
    out = [f"GPU types: {', '.join(c.gpu_types) or '—'}"]
    if c.campaign.lost_usd >= 0.005:
        out.append(f"lost: {usd(c.campaign.lost_usd)} of work done by attempts that died before committing it (redone by their retries)")
    if c.idle_usd is None:
        out.append("idle: unknown (no driver recorded the cluster)")
    elif c.idle_usd >= 0.005:
        out.append(f"idle: {usd(c.idle_usd)} of node time no unit used while a driver watched the cluster (each node at its own price)")
    return out


def compare_table(cmp: Comparison) -> Table:
    at = f" at {cmp.at:.0%} of each shard" if cmp.at is not None else ""
    t = Table(title=f"{cmp.a} − {cmp.b}{at} (bpb, 95 %)", title_justify="left")
    for col in ("seed", "batches", cmp.a, cmp.b, "Δ paired", "± unpaired", "pairing narrows by"):
        t.add_column(col, justify="right")
    for s in cmp.seeds:
        ratio = f"×{s.unpaired_half_width / s.diff.half_width:.1f}" if s.diff.half_width and s.unpaired_half_width else "—"
        hw = f" ± {s.diff.half_width:.6f}" if s.diff.half_width is not None else ""
        t.add_row(
            str(s.seed), f"{s.diff.n}/{s.diff.N}", f"{s.a.value:.6f}", f"{s.b.value:.6f}", f"{s.diff.value:+.6f}{hw}",
            f"± {s.unpaired_half_width:.6f}" if s.unpaired_half_width is not None else "—", ratio,
        )
    if cmp.seeds:
        hw = f" ± {cmp.mean_half_width:.6f}" if cmp.mean_half_width is not None else ""
        un = f"± {cmp.mean_unpaired_half_width:.6f}" if cmp.mean_unpaired_half_width is not None else "—"
        t.add_row("mean", "", "", "", f"{cmp.mean_diff:+.6f}{hw}", un, "")
    return t
