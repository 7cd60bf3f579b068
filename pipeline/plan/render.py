"""The plan's tables: one row per mix (the chosen one marked), and the prediction-vs-measured table."""

from __future__ import annotations

from rich.table import Table

from pipeline.progress.render import duration, usd


def plan_table(results, best) -> Table:
    t = Table(title="plan (★ the cheapest meeting the deadline and budget)")
    for col in ("", "pods", "makespan", "GPU-h", "$", "useful $", "idle $", "GPU util", "$/h"):
        t.add_column(col, justify="left" if col in ("", "pods") else "right")
    for r in results:
        t.add_row("★" if r is best else "", r.mix.name, duration(r.makespan_s), f"{r.gpu_hours:.2f}", usd(r.total_usd),
                  usd(r.useful_usd), usd(r.idle_usd), f"{100 * r.utilisation:.0f}%", f"{r.mix.usd_per_hour:.2f}")
    return t


def _pct(e: float | None) -> str:
    return "—" if e is None else f"{100 * e:+.1f}%"


def compare_rows(cmp: dict) -> list[list[str]]:
    """Rows of the prediction-vs-measured table (also the report's)."""
    rows = [["makespan", duration(cmp["makespan"]["predicted_s"]), duration(cmp["makespan"]["measured_s"]), _pct(cmp["makespan"]["error"]),
             usd(cmp["usd"]["predicted"]), usd(cmp["usd"]["measured"]), _pct(cmp["usd"]["error"])]]
    for r in cmp["recipes"]:
        rows.append([r["recipe"], duration(r["predicted_s"]), duration(r["measured_s"]), _pct(r["error_s"]),
                     usd(r["predicted_usd"]), usd(r["measured_usd"]), _pct(r["error_usd"])])
    return rows


COMPARE_HEADER = ["", "predicted", "measured", "error", "predicted $", "measured $", "error $"]


def compare_table(cmp: dict) -> Table:
    t = Table(title=f"prediction vs run {cmp['run']} on {cmp['mix']} (recipes: unit-seconds over seeds)")
    for col in COMPARE_HEADER:
        t.add_column(col, justify="left" if not col else "right")
    for row in compare_rows(cmp):
        t.add_row(*row)
    return t
