"""This tree's iraas against another checkout's, side by side in one run (a change's cost).

    git worktree add /tmp/before <rev>
    python benchmarks/ab.py --before /tmp/before [--rounds 5] [--requests 400]

Both run as `iraas up --min-workers 2 --max-workers 2` (the other tree's through PYTHONPATH,
its workers too), measured as benchmarks/versus.py measures, rounds interleaved; medians and
the ratio after/before are printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.versus import SAMPLE, interleaved  # noqa: E402
from iraas.files import image_files  # noqa: E402
from tests.service import Service  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="another checkout of iraas (its root directory)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=400)
    args = ap.parse_args()
    files = image_files([SAMPLE])
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        env = {"PYTHONPATH": str(Path(args.before).resolve())}
        svcs = {
            "before": Service(tmp / "before", env=env, min_workers=2, max_workers=2),
            "after": Service(tmp / "after", min_workers=2, max_workers=2),
        }
        med = interleaved(svcs, args.rounds, files, args.requests, tmp)
    b, a = med["before"], med["after"]
    print(f"\nmedians over {args.rounds} interleaved rounds    before      after   after/before")
    for key in ("c32", "c100", "p50_ms", "cpu_ms", "rss_mb"):
        print(f"{key:<36} {b[key]:>8.1f} {a[key]:>10.1f} {a[key] / b[key]:>12.2f}")


if __name__ == "__main__":
    main()
