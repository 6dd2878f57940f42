"""This tree's iraas against another checkout's, side by side in one run (a change's cost).

    git worktree add /tmp/before <rev>
    python benchmarks/ab.py --before /tmp/before [--rounds 5] [--requests 400] [--paired 150] [--postgres]

Both run as `iraas up --min-workers 2 --max-workers 2` (the other tree's through PYTHONPATH,
its workers too), measured as benchmarks/versus.py measures, rounds interleaved; medians and
the ratio after/before are printed; then `--paired` requests each one at a time, the two taking
turns request by request (latency differences this machine's wandering speed does not move).
`--postgres`: both with the queue and the blobs in PostgreSQL (a private server on this
machine, fsync on; a database each), the server's CPU an image too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.versus import SAMPLE, create_cost_us, interleaved  # noqa: E402
from iraas.files import image_files  # noqa: E402
from tests.pgserver import PgServer  # noqa: E402
from tests.service import Service  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="another checkout of iraas (its root directory)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--postgres", action="store_true", help="both on PostgreSQL (queue and blobs)")
    ap.add_argument("--paired", type=int, default=150, help="requests each, one at a time, in turns (0: none)")
    args = ap.parse_args()
    files = image_files([SAMPLE])
    pg = PgServer(fsync=True).start() if args.postgres else None
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            # `python -m` puts the working directory first on the path: from this tree's root,
            # the other service would import this tree's iraas, not the other one's
            os.chdir(tmp)
            print(f"creating a file in {tmp} (TMPDIR): median {create_cost_us(tmp):.0f} µs", flush=True)
            try:
                med = _run(args, files, tmp, pg)
            finally:
                os.chdir(ROOT)
    finally:
        if pg is not None:
            pg.remove()
    b, a = med["before"], med["after"]
    keys = ("c32", "c100", "p50_ms", "cpu_ms", "rss_mb") + (("db_cpu_ms",) if pg is not None else ())
    print(f"\nmedians over {args.rounds} interleaved rounds    before      after   after/before")
    for key in keys:
        print(f"{key:<36} {b[key]:>8.1f} {a[key]:>10.1f} {a[key] / b[key]:>12.2f}")
    if "paired" in med:
        print(f"\none at a time, in turns request by request ({args.paired} each, medians):")
        for key, value in med["paired"].items():
            print(f"  {key:<28} {value:>8.1f}")


def _run(args: argparse.Namespace, files: list[Path], tmp: Path, pg: PgServer | None) -> dict[str, dict[str, float]]:
    """Both services, on PostgreSQL if `pg`, measured side by side."""
    env: dict[str, dict[str, str]] = {"before": {}, "after": {}}
    if pg is not None:
        for name in env:
            url = pg.database(f"ab_{name}")
            env[name] = {"IRAAS_QUEUE": url, "IRAAS_BLOBS": url}
    env["before"]["PYTHONPATH"] = str(Path(args.before).resolve())
    svcs = {name: Service(tmp / name, env=env[name], min_workers=2, max_workers=2) for name in env}
    db = pg.proc.pid if pg and pg.proc else 0
    return interleaved(svcs, args.rounds, files, args.requests, tmp, db_pid=db, paired=args.paired)


if __name__ == "__main__":
    main()
