"""Where a service's time goes per image, under load: py-spy on every process, summed by place.

    python benchmarks/profile.py [--server iraas|baseline] [--requests 600] [--concurrency 32]
                                 [--rate 250] [--top 25] [--raw FILE]

Starts the server as `versus.py` does (iraas with 2 always-on workers, or the plain FastAPI
baseline), warms it, then samples every process of it with `py-spy record --subprocesses
--nonblocking` while the load generator sends `--requests` byte-distinct images at
`--concurrency`. Printed: for each process (web, worker, ...) its sampled milliseconds per image
and the functions where they were spent (self time, then time under each of the project's own
functions), so the cost of each step shows beside the model's. Sampled time is time on a CPU as
py-spy sees it (threads waiting in a system call are idle and not counted); absolute figures
move with this machine's speed, the shares less so.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.versus import SAMPLE, Baseline, _distinct, _running  # noqa: E402
from iraas.files import image_files  # noqa: E402
from iraas.loadgen.run import Plan, run  # noqa: E402
from tests.service import Service  # noqa: E402

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _roles(stacks: list[tuple[str, list[str], int]]) -> dict[str, str]:
    """What each sampled process is (by its `process PID:"command"` frame): an iraas worker
    (forked from the warm template: any thread of it ran Worker.run), the web tier (`iraas up`,
    with the controller), a baseline process, or its command line."""
    roles = {}
    for process, places, _ in stacks:
        if any(p.startswith("Worker.run ") for p in places):
            roles[process] = "worker"
        elif "iraas.cli up" in process:
            roles[process] = "web"
        elif "uvicorn" in process or "multiprocessing" in process:
            roles[process] = "baseline"
    return roles


def _place(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    anchors = (("/iraas/", "iraas/"), ("/benchmarks/", "benchmarks/"), ("site-packages/", ""), ("python3.11/", ""))
    for anchor, kept in anchors:
        if anchor in path:
            path = kept + path.split(anchor, 1)[1]
            break
    return f"{m['func']} ({path})"


def summarise(raw: Path, images: int, rate: int, top: int) -> str:
    """The collapsed stacks of `py-spy --format raw` as ms per image, by process role."""
    stacks = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            frames = stack.split(";")
            # --subprocesses: each process's ancestors come first, then its own stack
            own = [f for f in frames if not f.startswith("process ")]
            stacks.append((frames[len(frames) - len(own) - 1], [_place(f) for f in own], int(count)))
    roles = _roles(stacks)
    self_t: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    under: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total: collections.Counter[str] = collections.Counter()
    for process, places, n in stacks:
        role = roles.get(process, process.split(":", 1)[-1][:40])
        total[role] += n
        if places:
            self_t[role][places[-1]] += n
        for place in set(places):
            if "(iraas/" in place or "(benchmarks/" in place:
                under[role][place] += n
    ms = 1000 / rate / images
    out = []
    for role, n in total.most_common():
        out.append(f"\n== {role}: {n * ms:.2f} ms an image sampled")
        out.append("  self:")
        out += [f"    {c * ms:6.3f}  {p}" for p, c in self_t[role].most_common(top)]
        out.append("  under the project's own functions:")
        out += [f"    {c * ms:6.3f}  {p}" for p, c in under[role].most_common(top)]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", choices=("iraas", "baseline"), default="iraas")
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rate", type=int, default=250, help="samples a second, per process")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks here")
    args = p.parse_args()
    files = image_files([SAMPLE])
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.server == "iraas":
            svc = Service(tmp / "data", min_workers=2, max_workers=2).start()
            svc.wait_for(lambda: _running(svc) == 2, timeout=60)
            url, pid, stop = svc.url, svc.proc.pid if svc.proc else 0, svc.stop
        else:
            base = Baseline(tmp / "baseline.log")
            while not base.ready():
                pass
            url, pid, stop = base.url, base.proc.pid, base.stop
        try:
            warm = _distinct(files, 64, tmp / "warm")
            asyncio.run(run(Plan(url, warm, {}, requests=len(warm), concurrency=args.concurrency, api="v1")))
            raw = args.raw or tmp / "stacks.txt"
            spy = subprocess.Popen(
                [Path(sys.executable).with_name("py-spy"), "record", "--format", "raw", "--subprocesses",
                 "--nonblocking", "--rate", str(args.rate), "--pid", str(pid), "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            batch = _distinct(files, args.requests, tmp / "load")
            plan = Plan(url, batch, {}, requests=args.requests, concurrency=args.concurrency, api="v1")
            report = asyncio.run(run(plan))
            spy.send_signal(signal.SIGINT)
            _, err = spy.communicate(timeout=60)
            assert raw.exists(), err.decode(errors="replace")
        finally:
            stop()
        s = report.summary()
        print(f"{args.server}: {s['answered']} answered at c={args.concurrency}, {s['throughput_per_s']} img/s")
        print(summarise(raw, args.requests, args.rate, args.top))


if __name__ == "__main__":
    main()
