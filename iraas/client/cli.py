"""`iraas recognize URL FILES…`: the client on the command line, one line per image."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx

from .api import Client, IraasError, Recognition


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    r = sub.add_parser(
        "recognize",
        help="recognise image files with a running service (its HTTP API), one line per image",
        description="Send image files (or folders of them) to a running iraas service and print one line "
        "per image: 'name: label (confidence)', or JSON with --json. Exit 1 if any image failed or was not "
        "answered in time, 2 if the service refused the request.",
    )
    r.add_argument("url", metavar="URL", help="the service, e.g. http://127.0.0.1:8000")
    r.add_argument("files", nargs="+", metavar="FILE", help="image files or folders")
    r.add_argument("--json", action="store_true", help="print one JSON object per image (the API's fields)")
    r.add_argument("--api-key", default=None, help="API key (default: IRAAS_API_KEY)")
    r.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for every answer (default 60)")
    r.add_argument("--deadline-s", type=float, default=None, help="not recognised if still queued after this")
    r.add_argument("--callback-url", default=None, help="also POST each result there, signed (webhooks)")
    r.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..files import image_files

    files = image_files([Path(p) for p in args.files])
    if not files:
        print("iraas: no image files found", file=sys.stderr)
        return 2
    unreadable = [str(f) for f in files if not f.is_file()]
    if unreadable:  # before anything is sent: a typo should not cost a half-done run
        print(f"iraas: no such file: {', '.join(unreadable)}", file=sys.stderr)
        return 2
    key = args.api_key or os.environ.get("IRAAS_API_KEY")
    try:
        with Client(args.url, key, timeout=args.timeout) as client:
            answers = client.recognize(files, deadline_s=args.deadline_s, callback_url=args.callback_url)
    except (IraasError, OSError) as exc:  # refused, or a file that cannot be read
        print(f"iraas: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:  # no service there, or the connection broke
        print(f"iraas: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    for answer in answers:
        print(json.dumps(answer.__dict__) if args.json else _line(answer))
    return 0 if all(a.status == "done" for a in answers) else 1


def _line(r: Recognition) -> str:
    if r.status == "done":
        return f"{r.name}: {r.label} ({(r.confidence or 0):.2f})"
    if r.status == "failed":
        return f"{r.name}: failed: {r.error}: {r.reason}"
    return f"{r.name}: {r.status} (id {r.id}): no answer in time"
