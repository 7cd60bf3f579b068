"""`pipeline report CAMPAIGN`: report.md, report.json, submission.json and PNGs under
results/<campaign>/, from the store alone (docs/reports.md "Reports"); `--bundle` adds the reproduction tarball."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ReportFiles:
    report_md: Path
    report_json: Path
    submission: Path | None
    pictures: dict[str, Path]
    bundle: Path | None = None
    to_fill: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_report(
    spec, store, out_dir: Path, baseline=None, recipe: str | None = None, bytes_code: int | None = None,
    bundle: bool = False, campaign_file: str | None = None, live_run: str | None = None,
) -> ReportFiles:
    from pipeline.report.bundle import write_bundle
    from pipeline.report.collect import build_report
    from pipeline.report.markdown import render_markdown
    from pipeline.report.plots import write_plots
    from pipeline.report.submission import build_submission, pick_recipe

    report = build_report(spec, store, baseline, live_run=live_run)
    chosen = pick_recipe(report, recipe)  # a bad name is refused before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = write_plots(report, out_dir)
    submission = build_submission(report, chosen, bytes_code) if chosen is not None else None
    files = ReportFiles(
        _write(out_dir / "report.md", render_markdown(report, {k: p.name for k, p in pictures.items()}, submission)),
        _write(out_dir / "report.json", json.dumps(report.as_dict(), indent=1, sort_keys=True, allow_nan=False) + "\n"),
        _write(out_dir / "submission.json", json.dumps(submission, indent=2) + "\n") if submission else None,
        pictures,
        to_fill=submission["pipeline"]["to_fill"] if submission else [],
        differences=report.stacks.differences,
    )
    if bundle:
        made = [files.report_md, files.report_json, *([files.submission] if files.submission else []), *pictures.values()]
        files.bundle = write_bundle(spec, store, out_dir, made, campaign_file)
    return files


def _check_writable(out: Path, what: str) -> None:
    """The report's folder can be made and written, before the store is read for it or anything is
    written (the folder is made only once there is a report to put in it)."""
    top = out
    while not top.exists() and top != top.parent:  # the nearest folder that is there already
        top = top.parent
    if not top.is_dir():
        raise ValueError(f"{what}: {out}: cannot write the report there ({top} is not a directory)")
    if not os.access(top, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: {out}: cannot write the report there ({top} is not writable)")


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.progress.cli import live_driver, resolve_campaign
    from pipeline.report.baseline import parse_baseline

    spec, store = resolve_campaign(args.campaign)
    baseline = parse_baseline(args.baseline, args.baseline_recipe) if args.baseline else None
    if args.baseline_recipe and not args.baseline:
        raise ValueError("--baseline-recipe: needs --baseline FILE")
    if args.bytes_code is not None and args.bytes_code < 0:
        raise ValueError(f"--bytes-code {args.bytes_code}: must be >= 0")
    run, _ = live_driver(spec, store)
    out = Path(args.results_dir or spec.results_dir) / spec.name
    _check_writable(out, "--results-dir" if args.results_dir else f"{args.campaign}: results_dir")
    campaign_file = args.campaign if Path(args.campaign).is_file() else None
    try:
        files = write_report(spec, store, out, baseline, args.recipe, args.bytes_code, args.bundle, campaign_file, run)
    except OSError as e:  # what the check above cannot see coming (a full disk, a folder made read-only meanwhile)
        raise ValueError(f"{e.filename or out}: cannot write the report: {e.strerror or e}") from None
    print(f"report: {files.report_md} (+ {files.report_json.name}"
          + "".join(f", {p.name}" for p in files.pictures.values())
          + (f", {files.submission.name}" if files.submission else "") + ")")
    if files.to_fill:
        print(f"submission.json: fill in {', '.join(files.to_fill)}")
    for d in files.differences:
        print(f"seeds ran on different stacks: {d}")
    if files.bundle:
        print(f"bundle: {files.bundle}")
    return 0


def register(sub) -> None:
    r = sub.add_parser("report", help="report.md, report.json, submission.json and plots of a campaign, from its store")
    r.add_argument("campaign", help="campaign file, or STORE/NAME")
    r.add_argument("--baseline", metavar="FILE|BPB,...", help="another campaign's report.json, a parameter-golf submission.json, or per-seed val_bpb numbers")
    r.add_argument("--baseline-recipe", metavar="NAME", help="compare every recipe against this recipe of the baseline report.json")
    r.add_argument("--recipe", help="the recipe submission.json holds (default: the best one every seed finished)")
    r.add_argument("--bytes-code", type=int, metavar="N", help="bytes of the training code, for submission.json's bytes_code and bytes_total")
    r.add_argument("--bundle", action="store_true", help="also write bundle-<campaign>.tar.gz: what a maintainer needs to rerun it")
    r.add_argument("--results-dir", help="override the spec's results_dir")
    r.set_defaults(func=cmd_report)
