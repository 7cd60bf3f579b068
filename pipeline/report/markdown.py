"""report.md: the tables a record's README carries, written from the report, never by hand."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pipeline.progress.estimators import MIN_INTERVAL_BATCHES
from pipeline.report.collect import RecipeReport, Report, SeedRow
from pipeline.report.trajectory import SHARES


def _f(v: float | None, digits: int = 6) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _int(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def bpb_cell(row: SeedRow) -> str:
    """A finished number, or an estimate that says it is one: value, interval, % done, state."""
    if row.val_bpb is not None:
        return f"{row.val_bpb:.6f}"
    e = row.estimate
    if e and e.get("value") == e.get("value"):
        if e.get("half_width") is not None:
            return f"~{e['value']:.6f} [{e['low']:.6f}, {e['high']:.6f}] at {row.done:.1%} ({row.state})"
        if e.get("sample", True):
            n = e.get("batches_done", 0)
            return f"~{e['value']:.6f} at {row.done:.1%}, {n} batch{'es' if n != 1 else ''}: no interval below {MIN_INTERVAL_BATCHES} ({row.state})"
        return f"~{e['value']:.6f} at {row.done:.1%}, val-order prefix, no interval ({row.state})"
    return row.state + (f": {row.error}" if row.error else "")


def _p(r: RecipeReport) -> tuple[str, str]:
    if r.test is None:
        return "-", "-"
    delta = "-" if r.test.delta is None else f"{r.test.delta:+.6f}"
    p = f"{r.test.p_value:.4g} ({r.test.kind})" if r.test.p_value is not None else f"- ({r.test.note})"
    return delta, p


def _results(report: Report) -> list[str]:
    seeds = report.seeds
    head = ["recipe", "legality", *[f"seed {s}" for s in seeds], "mean", "std (ddof=0)", "std (ddof=1)"]
    if report.baseline is not None:
        head += ["Δ vs baseline", "p (one-sided)"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in report.recipes:
        cells = [r.name, r.legality.get("label", "-"), *[bpb_cell(row) for row in r.rows]]
        n = f" (n={r.bpb.n} of {len(r.rows)})" if not r.complete and r.bpb.n else ""
        cells += [_f(r.bpb.mean) + n, _f(r.bpb.std_ddof0), _f(r.bpb.std_ddof1)]
        if report.baseline is not None:
            cells += list(_p(r))
        out.append("| " + " | ".join(cells) + " |")
    return out


def _estimates(report: Report) -> list[str]:
    out = []
    for r in report.recipes:
        if r.with_estimates is not None:
            unfinished = ", ".join(f"seed {row.seed} at {row.done:.1%}" for row in r.rows if row.state != "DONE")
            out.append(
                f"- **{r.name}, ESTIMATE** with unfinished seeds ({unfinished}): mean {r.with_estimates.mean:.6f}, "
                f"std {_f(r.with_estimates.std_ddof0)} (ddof=0) / {_f(r.with_estimates.std_ddof1)} (ddof=1). Not a result."
            )
    return out


def _per_seed(r: RecipeReport) -> list[str]:
    head = ["seed", "state", "val_bpb", "val_loss", "tokens", "bytes", "windows", "eval s", "GPU-hours", "$", "GPU (priced)", "device", "artifact bytes"]
    out = [f"### {r.name}", "", f"{r.kind}; {r.legality.get('label')}: {r.legality.get('why')}", "",
           "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in r.rows:
        so_far = "" if row.state == "DONE" or row.val_loss is None else " (so far)"
        out.append("| " + " | ".join([
            str(row.seed), row.state, bpb_cell(row), _f(row.val_loss) + so_far, _int(row.tokens), _int(row.bytes), _int(row.windows),
            _f(row.eval_s, 1), _f(row.gpu_hours, 4), _f(row.usd, 4), row.gpu_type or "-", ", ".join(row.devices) or "-", _int(row.artifact_bytes),
        ]) + " |")
    out.append("")
    out.append(f"val_loss mean {_f(r.val_loss.mean)}; val_bpb std {_f(r.bpb.std_ddof0)} at ddof=0 (as records publish it), {_f(r.bpb.std_ddof1)} at ddof=1.")
    if r.test is not None:
        t = r.test
        vs = ", ".join(f"{v:.6f}" for v in r.baseline_values)
        line = f"Against {r.baseline} ({vs}): Δ mean {'-' if t.delta is None else format(t.delta, '+.6f')}; "
        line += (f"{t.kind} t = {t.t:.3f}, df = {t.df:.2f}, one-sided p = {t.p_value:.4g} (H1: lower than the baseline)"
                 if t.p_value is not None else f"no test: {t.note}")
        out.append("")
        out.append(line + ".")
    return out + [""]


def _trajectory(r: RecipeReport) -> list[str]:
    if not r.trajectories:
        return []
    basis = r.trajectories[0].basis
    head = [f"% of {basis}", *[f"seed {t.seed}" for t in r.trajectories], "mean"]
    out = [f"**{r.name}**", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for share in SHARES:
        vals = [t.at(share) for t in r.trajectories]
        known = [v for v in vals if v is not None]
        mean = sum(known) / len(known) if known and len(known) == len(vals) else None
        out.append("| " + " | ".join([f"{share:.0%}", *[_f(v) for v in vals], _f(mean)]) + " |")
    return out + [""]


def _cost(report: Report) -> list[str]:
    c = report.cost
    out = ["| | $ | useful $ | lost $ | GPU-hours | attempts |", "| --- | --- | --- | --- | --- | --- |"]
    for name, line in sorted(c.by_recipe.items(), key=lambda kv: (kv[0] != "train", kv[0])):
        out.append(f"| {name} | {line.usd:.4f} | {line.useful_usd:.4f} | {line.lost_usd:.4f} | {line.gpu_s / 3600:.4f} | {line.attempts} |")
    out.append(f"| **campaign** | {c.campaign.usd:.4f} | {c.campaign.useful_usd:.4f} | {c.campaign.lost_usd:.4f} | {c.campaign.gpu_s / 3600:.4f} | {c.campaign.attempts} |")
    idle = "not recorded (no driver watched the cluster)" if c.idle_usd is None else f"${c.idle_usd:.4f}"
    return out + ["", f"Idle node time (billed while a driver watched, no unit on it): {idle}; the campaign's bill ${c.total_usd:.4f}. "
                  f"GPU types: {', '.join(c.gpu_types) or '-'}.", ""]


def _provenance(report: Report) -> list[str]:
    st = report.stacks
    out = []
    if st.differences:
        out += ["**The seeds did not all run on the same software stack:**", ""] + [f"- {d}" for d in st.differences] + [""]
    elif st.stacks:
        out += ["Every seed ran each role (training, each recipe) on the same software stack.", ""]
    if st.spans:
        out += ["**Groups that ran over several nodes** (`cluster.groups_span_nodes`: NCCL between pods):", ""]
        out += [f"- {g}" for g in st.spans] + [""]
    if st.unrecorded:
        out += [f"Provenance not recorded for: {', '.join(st.unrecorded)} (written before attempts recorded it).", ""]
    fields = ["python", "torch", "cuda", "cudnn", "nccl", "flash_attn", "ray", "gpus", "gpu_driver", "image", "code_sha256", "packages_sha256"]
    if st.stacks:
        out += ["| stack | " + " | ".join(fields) + " |", "|" + " --- |" * (len(fields) + 1)]
        for i, s in enumerate(st.stacks):
            out.append(f"| {i} | " + " | ".join(_short(s.get(k)) for k in fields) + " |")
        out.append("")
        roles = "; ".join(f"seed {seed}: " + ", ".join(f"{role} {ids}" for role, ids in per.items()) for seed, per in st.by_seed.items())
        out += [f"Stacks per seed and role: {roles}.", ""]
    out.append(f"Spec fingerprint {report.spec_fingerprint}; campaign (data by content) {report.campaign_fingerprint or '-'}.")
    data = report.data
    if data:
        shards = data.get("shards") or {}
        out.append(f"Data: tokenizer sha256 {data.get('tokenizer', '-')}; " + "; ".join(
            f"{split} shards sha256 {', '.join(d[:16] for d in ds)}" for split, ds in shards.items()) + ".")
    for c in report.commands:
        out.append(f"Command: `{c}`")
    return out + [""]


def _short(v: Any) -> str:
    if v is None:
        return "-"
    s = str(v)
    return s[:12] if len(s) == 64 else s


def render_markdown(report: Report, pictures: dict[str, str], submission: dict[str, Any] | None) -> str:
    when = dt.datetime.fromtimestamp(report.generated, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# {report.campaign}: {len(report.seeds)}-seed report", "",
        f"Written {when} from the store {report.store} by `pipeline report`; every number below is computed from it. "
        "An unfinished eval shows its running value with its interval and % done, marked `~`, never as a result.", "",
        "## val_bpb", "",
        *_results(report), "",
        *_estimates(report),
    ]
    if report.baseline is not None:
        lines += [f"Baseline: {report.baseline.source}. Δ = mean(ours) − mean(baseline); p: one-sided t-test of ours < baseline "
                  "(Welch's over per-seed values; one-sample against a single number).", ""]
    if "seeds" in pictures:
        lines += [f"![per-seed val_bpb]({pictures['seeds']})", ""]
    lines += ["## Per seed", ""]
    for r in report.recipes:
        lines += _per_seed(r)
    lines += ["## Running val_bpb in val order", "",
              "The running value after each share of the windows, scored in val order (the first batches swing widely).", ""]
    for r in report.recipes:
        lines += _trajectory(r)
    if "trajectory" in pictures:
        lines += [f"![running val_bpb]({pictures['trajectory']})", ""]
    lines += ["## Training", "", "| seed | state | artifact bytes | sha256 | steps | train s | world size | device |", "|" + " --- |" * 8]
    for t in report.trains:
        lines.append(f"| {t.seed} | {t.state} | {_int(t.artifact_bytes)} | {(t.sha256 or '-')[:16]} | {_int(t.steps)} | {_f(t.wall_s, 1)} | "
                     f"{t.world_size or '-'} | {', '.join(t.devices) or '-'} |")
    lines += ["", "## Cost and progress", "", *_cost(report)]
    if "progress" in pictures:
        lines += [f"![cost and progress]({pictures['progress']})", ""]
    if report.plan_compare is not None:
        lines += ["## Plan vs measured", "", *_plan_compare(report.plan_compare)]
    lines += ["## Provenance", "", *_provenance(report)]
    if submission is not None:
        p = submission["pipeline"]
        lines += ["## submission.json", "", f"`submission.json` holds recipe **{p['recipe']}** ({p['status']}) in the parameter-golf format."]
        if p["to_fill"]:
            lines.append(f"The store cannot know these; fill them in: {', '.join(p['to_fill'])}.")
        lines.append("")
    return "\n".join(lines) + "\n"


def _plan_compare(cmp: dict[str, Any]) -> list[str]:
    """`pipeline plan --compare`'s table: predicted vs measured makespan and $, per recipe its units'
    seconds over seeds."""
    from pipeline.plan.render import COMPARE_HEADER, compare_rows

    head = ["what", *COMPARE_HEADER[1:]]
    return [f"Predicted by `pipeline plan` for run {cmp['run']} on {cmp['mix']}; error = predicted / measured − 1.", "",
            "| " + " | ".join(head) + " |", "|" + " --- |" * len(head),
            *("| " + " | ".join(row) + " |" for row in compare_rows(cmp)), ""]
