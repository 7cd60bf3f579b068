"""The report's pictures (matplotlib, Agg: no display needed), PNGs beside report.md.

- trajectory.png: running val_bpb against % of windows scored in val order, one line per seed, one
  panel per recipe (the seeds' trajectory table, drawn);
- seeds.png: each seed's val_bpb per recipe, the mean ± std (ddof = 1) of the finished seeds, the
  baseline's mean where there is one; an unfinished seed is a hollow marker with its interval;
- progress.png: $ spent and % of eval batches done over the campaign's time, training runs shaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.report.collect import Report  # noqa: E402

DPI = 110


def _colors(seeds: list[int]) -> dict[int, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {s: cycle[i % len(cycle)] for i, s in enumerate(seeds)}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_trajectory(report: Report, out: Path) -> Path | None:
    recipes = [r for r in report.recipes if r.trajectories]
    if not recipes:
        return None
    colors = _colors(report.seeds)
    cols = min(3, len(recipes))
    rows = math.ceil(len(recipes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, r in zip(axes.flat, recipes):
        settled = []
        for t in r.trajectories:
            x = t.share * 100
            ax.plot(x, t.bpb, color=colors[t.seed], lw=1.4, label=f"seed {t.seed}" + ("" if t.complete else " (so far)"))
            settled.append(t.bpb[t.share >= 0.05] if (t.share >= 0.05).any() else t.bpb)
        vals = np.concatenate(settled)
        lo, hi = float(vals.min()), float(vals.max())
        pad = max((hi - lo) * 0.15, 1e-4)
        ax.set_ylim(lo - pad, hi + pad)  # the first batches swing widely; the rest is what one reads
        ax.set_xlim(0, 100)
        ax.set_title(r.name)
        ax.set_xlabel(f"% of {r.trajectories[0].basis} scored (val order)")
        ax.set_ylabel("running val_bpb")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(recipes):]:
        ax.axis("off")
    fig.suptitle(f"{report.campaign}: running val_bpb in val order", fontsize=12)
    return _save(fig, out / "trajectory.png")


def plot_seeds(report: Report, out: Path) -> Path | None:
    recipes = [r for r in report.recipes if any(row.val_bpb is not None or row.estimate for row in r.rows)]
    if not recipes:
        return None
    colors = _colors(report.seeds)
    n = len(report.seeds)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(recipes) + 2), 4.2))
    labelled: set[str] = set()

    def once(label: str) -> str | None:
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for i, r in enumerate(recipes):
        for j, row in enumerate(r.rows):
            x = i + (j - (n - 1) / 2) * 0.12
            if row.val_bpb is not None:
                ax.plot(x, row.val_bpb, "o", color=colors[row.seed], ms=7, label=once(f"seed {row.seed}"))
            elif row.estimate and row.estimate.get("value") == row.estimate.get("value"):
                e = row.estimate
                err = None if e.get("half_width") is None else [[e["value"] - e["low"]], [e["high"] - e["value"]]]
                ax.errorbar(x, e["value"], yerr=err, fmt="o", mfc="none", color=colors[row.seed], ms=7, capsize=3,
                            label=once(f"seed {row.seed}") or once("unfinished: estimate ± interval"))
                ax.annotate(f"{row.done:.0%}", (x, e["value"]), xytext=(4, -10), textcoords="offset points", fontsize=7)
        if r.bpb.mean is not None:
            std = r.bpb.std_ddof1 or 0.0
            ax.errorbar(i + 0.3, r.bpb.mean, yerr=std, fmt="s", color="black", capsize=5, ms=6,
                        label=once("mean ± std (ddof=1), finished seeds"))
            ax.annotate(f"{r.bpb.mean:.4f}", (i + 0.3, r.bpb.mean), xytext=(6, 0), textcoords="offset points", fontsize=8, va="center")
        if r.baseline_values:
            m = float(np.mean(r.baseline_values))
            ax.hlines(m, i - 0.4, i + 0.4, colors="gray", linestyles="--", label=once("baseline mean"))
    ax.set_xticks(range(len(recipes)), [r.name for r in recipes], rotation=15)
    ax.set_xlim(-0.6, len(recipes) - 0.4)
    ax.set_ylabel("val_bpb (lower is better)")
    ax.set_title(f"{report.campaign}: per-seed val_bpb")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: never over a point
    return _save(fig, out / "seeds.png")


def plot_progress(report: Report, out: Path) -> Path | None:
    tl = report.timeline
    if tl is None:
        return None
    minutes = tl.t_s / 60.0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 5.2), sharex=True)
    top.plot(minutes, tl.usd, color="tab:red")
    if not tl.priced:
        top.text(0.5, 0.5, "no attempt in the ledger (evals run by hand): cost not known", transform=top.transAxes, ha="center")
    top.set_ylabel("$ spent (GPU time × price)")
    top.set_title(f"{report.campaign}: cost and progress (total ${tl.usd[-1]:.2f})")
    bottom.plot(minutes, tl.eval_done * 100, color="tab:blue")
    bottom.set_ylabel("% of eval batches done")
    bottom.set_ylim(0, 105)
    bottom.set_xlabel("minutes since the first unit started")
    for ax in (top, bottom):
        for k, (seed, a, b) in enumerate(tl.trains):
            ax.axvspan(a / 60.0, b / 60.0, color="tab:green", alpha=0.08, label="training" if (k == 0 and ax is top) else None)
        ax.grid(alpha=0.3)
    if tl.trains:
        top.legend(fontsize=8, loc="upper left")
    return _save(fig, out / "progress.png")


def write_plots(report: Report, out: Path) -> dict[str, Path]:
    """name → PNG written (a picture without data is not drawn)."""
    made = {"trajectory": plot_trajectory(report, out), "seeds": plot_seeds(report, out), "progress": plot_progress(report, out)}
    return {k: v for k, v in made.items() if v is not None}
