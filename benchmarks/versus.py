"""iraas against a plain FastAPI server without a queue, side by side in one run.

    python benchmarks/versus.py [--rounds 3] [--requests 500] [--paired 150] [--one-thread] [--with-key] [--with-bf16]

`--paired N`: after the rounds, N requests each one at a time, the servers taking turns request
by request (default 150): the latency difference measured so, pair by pair, is not moved by
this machine's speed wandering between phases.

Both serve the same ONNX model with the same preprocessing in 2 model processes: iraas with 2
always-on workers (`iraas up --min-workers 2 --max-workers 2`), the baseline as
`uvicorn benchmarks.baseline:app --workers 2`. Rounds are interleaved (baseline, iraas, then
iraas, baseline, ...: who goes first alternates) and every request is byte-distinct (a unique
trailer after the image), so no cache answers one. Besides the ratio of the medians, each
round's own ratio: this machine's speed wanders by more than the servers differ (the same
server has read 82 and 158 img/s in one run), and a round's two runs meet the same speed.
Printed: medians over the rounds and the ratios iraas / baseline, each round's ratio, and how
much of iraas's CPU an image is its own process's (the web tier and the controller: the rest
is its workers').
`--one-thread` adds iraas with `--idle-threads 1`: every image on its worker's one thread, as the
baseline runs it, even while the other core is idle (iraas's default borrows it). `--with-key`
adds a third server, iraas with an API key required (quotas set out of reach), to
measure what checking a key and counting its quota costs. `--with-bf16` adds iraas with its
workers on OpenVINO in bf16 (`--runtime openvino --precision bf16`), against iraas in fp32.
`--twin` adds a second iraas, the same in every way: how far two equal servers read apart on
this machine in the same run (its round-by-round ratio is printed beside iraas / baseline).
`--tiers-apart`: the model processes on the last core, everything else on the others (iraas's
web tier and controller, and this load client): a web tier on hosts of its own, as iraas is
deployed beyond one machine, with one core for the models of each server. The baseline has no
tier apart from its models, so the whole of it is on the model core. One model process each
(two on one core take turns mid-image, each evicting the other's model from the caches), and
iraas's on one thread (`--idle-threads 1`): its workers are pinned after they start, so they
would take both cores for their own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iraas.files import image_files  # noqa: E402
from iraas.loadgen.run import Plan, run  # noqa: E402
from iraas.model.bench import run_bench  # noqa: E402
from tests.service import Service, create_key, free_port  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "datasets" / "imagenet-sample" / "images"
_unique = itertools.count()


class Baseline:
    def __init__(self, log: Path, workers: int = 2) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "ab")  # noqa: SIM115
        cmd = [sys.executable, "-m", "uvicorn", "benchmarks.baseline:app", "--workers", str(workers)]
        cmd += ["--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/docs", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def create_cost_us(folder: Path, n: int = 200) -> float:
    """The median time to create a file in `folder` (the services' data directories go there):
    on this machine it has read from 7 µs to 400 µs by directory and day, and iraas makes three
    files an image (input, result, dedup entry) where the baseline makes none."""
    probe = folder / "create-probe"
    probe.mkdir(parents=True, exist_ok=True)
    times = []
    for i in range(n):
        t = time.perf_counter()
        os.close(os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        times.append(time.perf_counter() - t)
    for i in range(n):
        os.unlink(probe / str(i))
    probe.rmdir()
    return 1e6 * statistics.median(times)


def _tree(root: int) -> list[int]:
    """`root` and every process below it (uvicorn's and iraas's workers are children)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parents.items() if pp in frontier]
        out += frontier
    return out


def _cpu_s(root: int) -> float:
    """CPU seconds of `root`'s process tree as it is now, with its children that have ended
    (their time is in their parent's cutime/cstime once reaped): a database forks a process
    per connection, a fleet a process per worker, and either may end during a run."""
    total = 0.0
    for pid in _tree(root):
        with contextlib.suppress(OSError):  # ended meanwhile
            total += _own_cpu_s(pid, reaped=True)
    return total


def _own_cpu_s(pid: int, reaped: bool = False) -> float:
    """CPU seconds of `pid` alone (`reaped`: with its children that have ended). Of iraas: its
    web tier and controller (the models run in its workers, below it); of the baseline,
    uvicorn's supervisor (its workers do everything)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    times = fields[11:15] if reaped else fields[11:13]  # utime stime [cutime cstime]
    return sum(int(f) for f in times) / os.sysconf("SC_CLK_TCK")


def _machine_cpu_s() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine so far, all cores (/proc/stat: busy is
    user, nice, system, irq and softirq; idle includes iowait)."""
    user, nice, system, idle, iowait, irq, softirq = (int(f) for f in Path("/proc/stat").read_text().split()[1:8])
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, (idle + iowait) / hz


def _pin(pid: int, cores: set[int]) -> None:
    """Every thread of `pid` on `cores` (threads and processes it starts later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task), cores)


def tiers_apart(apart: list[int], whole: list[int]) -> tuple[set[int], set[int]]:
    """The last core for the models, the others for the rest, this process (the load client)
    too. Of each server in `apart` (root processes), the root (the web tier, the controller)
    goes with the rest and the processes below it with the models; each of `whole` goes to the
    model core entire. Returns (the rest's cores, the models' core)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("--tiers-apart needs 2 cores or more")
    rest, models = set(cores[:-1]), {cores[-1]}
    _pin(os.getpid(), rest)
    for root in apart + whole:
        for pid in _tree(root):
            _pin(pid, rest if pid == root and root in apart else models)
    return rest, models


def _rss_mb(pids: list[int]) -> float:
    kb = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        kb += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
    return kb / 1024


def _distinct(files: list[Path], n: int, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for f in itertools.islice(itertools.cycle(files), n):
        target = folder / f"{f.stem}-{next(_unique)}{f.suffix}"
        target.write_bytes(f.read_bytes() + next(_unique).to_bytes(8, "big"))
        out.append(target)
    return out


def _measure(url: str, root: int, files: list[Path], n: int, tmp: Path, key: str = "", db: int = 0) -> dict[str, float]:
    """`db`: a database server's process, whose CPU an image at c=32 is `db_cpu_ms` (0: none)."""
    out: dict[str, float] = {}
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    for c in (32, 100):
        batch = _distinct(files, n, tmp / f"c{c}-{next(_unique)}")
        before, own, db_before = _cpu_s(root), _own_cpu_s(root), _cpu_s(db) if db else 0.0
        machine, client_s = _machine_cpu_s(), time.process_time()  # the load client runs here
        report = asyncio.run(run(Plan(url, batch, {}, requests=n, concurrency=c, api="v1", key=key)))
        s = report.summary()
        assert s["answered"] == n, s
        out[f"c{c}"] = float(s["throughput_per_s"])  # type: ignore[arg-type]
        if c == 32:
            out["cpu_ms"] = 1000 * (_cpu_s(root) - before) / n
            out["root_cpu_ms"] = 1000 * (_own_cpu_s(root) - own) / n
            (busy, idle), (busy0, idle0) = _machine_cpu_s(), machine
            out["machine_cpu_ms"] = 1000 * (busy - busy0) / n
            out["idle_pct"] = 100 * (idle - idle0) / (busy - busy0 + idle - idle0)
            out["client_cpu_ms"] = 1000 * (time.process_time() - client_s) / n
            if db:
                out["db_cpu_ms"] = 1000 * (_cpu_s(db) - db_before) / n
    single = _distinct(files, 50, tmp / f"one-{next(_unique)}")
    lat = []
    with httpx.Client(headers=auth) as client:
        for i, f in enumerate(single):
            t = time.perf_counter()
            r = client.post(url + "/v1/recognitions", files={"files": (f.name, f.read_bytes())}, timeout=60)
            assert r.status_code == 200 and r.json()[0]["status"] == "done", r.text
            if i >= 10:  # warm-up
                lat.append(time.perf_counter() - t)
    out["p50_ms"] = 1000 * statistics.median(lat)
    out["rss_mb"] = _rss_mb(_tree(root))
    return out


def paired_one_at_a_time(servers: dict[str, tuple[str, str]], files: list[Path], n: int, tmp: Path) -> dict[str, float]:
    """One request at a time, taking turns between the servers request by request (name → (url,
    key)): this machine's speed wanders over seconds, so latencies measured in separate phases
    differ by more than the servers do; taken in turns, each pair meets the same speed. Who
    goes first rotates request by request: a request that follows another server's meets the
    caches as that one left them. The median latency of each, and of each server's difference
    from the first, request by request."""
    single = _distinct(files, n + 10, tmp / f"paired-{next(_unique)}")
    lat: dict[str, list[float]] = {name: [] for name in servers}
    model: dict[str, list[float]] = {name: [] for name in servers}  # decode + inference, as reported
    clients = {
        name: httpx.Client(headers={"Authorization": f"Bearer {key}"} if key else {})
        for name, (_, key) in servers.items()
    }
    try:
        names = list(servers)
        for i, f in enumerate(single):
            for name in names[i % len(names) :] + names[: i % len(names)]:  # who goes first rotates
                url = servers[name][0]
                t = time.perf_counter()
                r = clients[name].post(url + "/v1/recognitions", files={"files": (f.name, f.read_bytes())}, timeout=60)
                assert r.status_code == 200 and r.json()[0]["status"] == "done", r.text
                if i >= 10:  # warm-up
                    lat[name].append(time.perf_counter() - t)
                    spent = r.json()[0]["timings"]
                    model[name].append(spent["decode"] + spent["inference"])
    finally:
        for c in clients.values():
            c.close()
    first = next(iter(servers))
    out = {f"{name} p50_ms": 1000 * statistics.median(v) for name, v in lat.items()}
    out |= {f"{name} model_ms": 1000 * statistics.median(v) for name, v in model.items()}
    # what each server's way adds to its model, request by request (the model's own speed aside)
    out |= {
        f"{name} beyond model_ms": 1000 * statistics.median(a - m for a, m in zip(lat[name], model[name], strict=True))
        for name in servers
    }
    for name in list(servers)[1:]:
        out[f"{name} - {first} ms"] = 1000 * statistics.median(
            a - b for a, b in zip(lat[name], lat[first], strict=True)
        )
    return out


def interleaved(
    svcs: dict[str, Service],
    rounds: int,
    files: list[Path],
    requests: int,
    tmp: Path,
    db_pid: int = 0,
    paired: int = 0,
) -> dict[str, dict[str, float]]:
    """Start each service (2 workers running), measure them in interleaved rounds, stop them;
    the medians of each figure, by service (`db_pid`: a database server's, its CPU too), and
    under "paired" `paired_one_at_a_time` of `paired` requests each (0: none)."""
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in svcs}
    try:
        for svc in svcs.values():
            svc.start().wait_for(lambda s=svc: _running(s) == 2, timeout=60)
        for r in range(rounds):
            for name, svc in svcs.items():
                assert svc.proc is not None
                m = _measure(svc.url, svc.proc.pid, files, requests, tmp, db=db_pid)
                rows[name].append(m)
                print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in m.items()), flush=True)
        turns = paired_one_at_a_time({n: (s.url, "") for n, s in svcs.items()}, files, paired, tmp) if paired else {}
    finally:
        for svc in svcs.values():
            if svc.proc is not None:
                svc.stop()
    med = {name: {k: statistics.median(m[k] for m in ms) for k in ms[0]} for name, ms in rows.items()}
    return med | ({"paired": turns} if turns else {})


def _running(svc: Service) -> int:
    return len([w for w in svc.cluster()["workers"] if w["state"] in ("idle", "busy")])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=500, help="per throughput run")
    ap.add_argument("--with-key", action="store_true", help="also iraas with an API key required")
    ap.add_argument("--with-bf16", action="store_true", help="also iraas on OpenVINO bf16")
    ap.add_argument("--paired", type=int, default=150, help="requests each, one at a time, in turns")
    ap.add_argument(
        "--one-thread", action="store_true", help="also iraas with --idle-threads 1 (an image never on idle cores)"
    )
    ap.add_argument("--twin", action="store_true", help="also a second iraas, the same: the machine's noise")
    ap.add_argument("--tiers-apart", action="store_true", help="the models on the last core, the rest on the others")
    args = ap.parse_args()
    files = image_files([SAMPLE])
    ceiling = run_bench(None, files, batch=8, procs=2).images_per_s
    print(f"in-process ceiling (iraas bench model, 2 processes): {ceiling:.1f} img/s", flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"creating a file in {tmp} (TMPDIR): median {create_cost_us(tmp):.0f} µs", flush=True)
        procs = 1 if args.tiers_apart else 2  # model processes of each server
        base = Baseline(tmp / "baseline.log", procs)
        fleet: dict[str, object] = {"min_workers": procs, "max_workers": procs}
        if args.tiers_apart:  # pinned after they start, the workers would count 2 cores their own
            fleet["idle_threads"] = 1
        svcs = {"iraas": (Service(tmp / "iraas", **fleet), "")}
        if args.with_key:
            limits = ["--requests-per-s", "1000000", "--images-per-s", "1000000", "--images-per-day", "1000000000"]
            key = create_key(tmp / "iraas-key", "bench", "recognize", *limits)
            svcs["iraas+key"] = (Service(tmp / "iraas-key", **fleet), key)
        if args.twin:
            svcs["iraas twin"] = (Service(tmp / "iraas-twin", **fleet), "")
        if args.one_thread:
            svcs["iraas 1 thread"] = (Service(tmp / "iraas-1", **(fleet | {"idle_threads": 1})), "")
        if args.with_bf16:
            bf16 = {"runtime": "openvino", "precision": "bf16"}
            svcs["iraas bf16"] = (Service(tmp / "iraas-bf16", **bf16, **fleet), "")
        try:
            servers = {"baseline": (base.url, base.proc.pid, "")}
            for name, (svc, key) in svcs.items():
                svc.start().wait_for(lambda s=svc: len(s.worker_pids()) == procs, timeout=60)
                assert svc.proc is not None
                servers[name] = (svc.url, svc.proc.pid, key)
            svcs["iraas"][0].wait_for(base.ready, timeout=60)
            if args.tiers_apart:
                iraas = [pid for name, (_, pid, _) in servers.items() if name in svcs]
                rest, models = tiers_apart(iraas, [base.proc.pid])
                print(f"tiers apart: the models on core {sorted(models)}, the rest on {sorted(rest)}", flush=True)
            rows: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
            for r in range(args.rounds):
                order = list(servers.items())
                for name, (url, pid, key) in order[::-1] if r % 2 else order:  # who goes first alternates
                    m = _measure(url, pid, files, args.requests, tmp, key)
                    rows[name].append(m)
                    print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in m.items()), flush=True)
            paired = paired_one_at_a_time({n: (u, k) for n, (u, _, k) in servers.items()}, files, args.paired, tmp)
        finally:
            for svc, _ in svcs.values():
                if svc.proc is not None:
                    svc.stop()
            base.stop()
    _report(rows, ceiling)
    print(f"\none at a time, in turns request by request ({args.paired} each, medians):")
    for key, value in paired.items():
        print(f"  {key:<28} {value:>8.1f}")


def _report(rows: dict[str, list[dict[str, float]]], ceiling: float) -> None:
    med = {name: {k: statistics.median(m[k] for m in ms) for k in ms[0]} for name, ms in rows.items()}
    b, i = med["baseline"], med["iraas"]
    if "iraas+key" in med:
        k = med["iraas+key"]
        print("\nwith an API key required, as a ratio of iraas without (medians):")
        for key in ("c32", "c100", "p50_ms", "cpu_ms"):
            print(f"  {key:<8} {i[key]:>9.1f} → {k[key]:>9.1f}   x{k[key] / i[key]:.3f}")
    others = (("iraas 1 thread", "with --idle-threads 1"), ("iraas bf16", "with its workers on OpenVINO bf16"))
    for name, what in others:
        if name in med:
            f = med[name]
            print(f"\niraas {what}, as a ratio of iraas (medians):")
            for key in ("c32", "c100", "p50_ms", "cpu_ms", "rss_mb"):
                print(f"  {key:<8} {i[key]:>9.1f} → {f[key]:>9.1f}   x{f[key] / i[key]:.3f}")
    print(f"\nmedians over {len(rows['iraas'])} interleaved rounds      baseline      iraas    iraas/baseline")
    for key, label in (
        ("c32", "throughput c=32 (img/s)"),
        ("c100", "throughput c=100 (img/s)"),
        ("p50_ms", "one at a time, p50 (ms)"),
        ("cpu_ms", "server CPU per image, c=32 (ms)"),
        ("rss_mb", "RSS, all server processes (MB)"),
    ):
        print(f"{label:<36} {b[key]:>9.1f} {i[key]:>10.1f} {i[key] / b[key]:>12.2f}")
    print(f"  of which iraas's web tier and controller (its own process): {i['root_cpu_ms']:.1f} ms")
    # Co-located, throughput is the busy cores over the machine's CPU an image: what the
    # servers take, the load client's share, and the rest (the kernel's threads, idle servers)
    for key, label in (
        ("machine_cpu_ms", "machine CPU per image, c=32 (ms)"),
        ("client_cpu_ms", "  of it the load client (ms)"),
        ("idle_pct", "cores idle meanwhile (%)"),
    ):
        print(f"{label:<36} {b[key]:>9.1f} {i[key]:>10.1f} {i[key] / b[key]:>12.2f}")
    rest = {name: m["machine_cpu_ms"] - m["cpu_ms"] - m["client_cpu_ms"] for name, m in (("b", b), ("i", i))}
    print(f"  of it neither server nor client: baseline {rest['b']:.2f} ms, iraas {rest['i']:.2f} ms")
    pairs = [("iraas", "baseline")] + ([("iraas twin", "iraas")] if "iraas twin" in rows else [])
    for (top, bottom), key in itertools.product(pairs, ("c32", "c100")):  # a round's pair met one machine
        ratios = sorted(m[key] / n[key] for m, n in zip(rows[top], rows[bottom], strict=True))
        spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}"
        print(f"{top}/{bottom} round by round, {key}: median {statistics.median(ratios):.2f} ({spread})")
    print(
        f"throughput ÷ ceiling: baseline {b['c32'] / ceiling:.2f} / {b['c100'] / ceiling:.2f}, "
        f"iraas {i['c32'] / ceiling:.2f} / {i['c100'] / ceiling:.2f}"
    )


if __name__ == "__main__":
    main()
