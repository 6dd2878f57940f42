"""`iraas loadgen`: run a plan with a live progress bar, print and save the report."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import Record, Report
    from .run import Plan


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "loadgen",
        help="fire a workload at a running service and check every answer",
        description="Fire a workload at a running iraas (or course-compatible) service, check every "
        "answer against the labels, and report throughput and latency.",
    )
    p.add_argument("url", help="the service, e.g. http://127.0.0.1:8000")
    p.add_argument("--images", required=True, help="folder of images to send (cycled)")
    p.add_argument("--labels", help="expected labels: course faces CSV, course ImageNet CSV or labels.csv")
    p.add_argument("--requests", type=int, default=100, help="requests to send (default 100)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=int, default=100, help="closed loop: requests in flight (default 100)")
    mode.add_argument("--rate", type=float, default=0.0, help="open loop: arrivals per second")
    p.add_argument(
        "--pattern",
        choices=["steady", "step", "spike"],
        default="steady",
        help="open-loop schedule: steady, step (1/4 → full rate), spike (trickle, burst, trickle)",
    )
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (default: no limit)")
    p.add_argument("--api", choices=["course", "v1"], default="course", help="POST / (course) or /v1/recognitions")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request time-out, seconds (default 120)")
    p.add_argument(
        "--key",
        default=os.environ.get("IRAAS_API_KEY", ""),
        help="API key to send (default $IRAAS_API_KEY; the course API may be open: --anonymous-course)",
    )
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--plot", help="write a PNG of latency, workers and queue depth over time")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    report = _run_with_progress(_plan(args), args.requests)
    print(report.text())
    if args.out:
        Path(args.out).write_text(report.to_json())
    if args.plot:
        report.plot(args.plot)
    s = report.summary()
    return 0 if s["answered"] == s["sent"] and not s["wrong"] else 1


def _plan(args: argparse.Namespace) -> Plan:
    from ..files import image_files
    from .labels import read_labels
    from .run import Plan

    images = image_files([Path(args.images)])
    if not images:
        raise ValueError(f"no images in {args.images}")
    labels = read_labels(args.labels) if args.labels else {}
    concurrency = args.concurrency if not args.rate else max(args.concurrency, 1000)
    return Plan(
        args.url,
        images,
        labels,
        args.requests,
        concurrency,
        args.rate,
        args.pattern,
        args.duration,
        args.api,
        args.timeout,
        args.key,
    )


def _run_with_progress(plan: Plan, total: int) -> Report:
    # Imported here: every `iraas` command builds this parser, and workers need not load
    # rich and httpx.
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .run import run

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task("requests", total=total, status="")
        seen = {"ok": 0, "wrong": 0, "err": 0}

        def tick(rec: Record) -> None:
            seen["err" if rec.error else "wrong" if rec.correct is False else "ok"] += 1
            bar.update(task, advance=1, status=f"ok {seen['ok']} wrong {seen['wrong']} errors {seen['err']}")

        return asyncio.run(run(plan, tick))
