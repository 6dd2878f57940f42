"""The `iraas` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import logs
from .imaging import ImageError
from .model.spec import SpecError
from .signing import new_secret

DEFAULT_BENCH_DIR = Path("../shared/datasets/imagenet-sample/images")
MODEL_HELP = (
    "built-in model name (efficientnet-lite0 [default], -lite1, -lite2), faces (with --gallery), "
    "or a model spec file (TOML/JSON)"
)
AWS_SETTINGS = ["backend", "name", "bucket", "aws_region", "aws_endpoint_url"]
GALLERY_HELP = "model faces: a folder per person (GALLERY/<name>/*.jpg, enrolled incrementally) or a gallery file"


def _cmd_classify(args: argparse.Namespace) -> int:
    from .files import image_files
    from .model.recognizer import gallery_from_path, load_recognizer

    gallery = gallery_from_path(args.gallery) if args.gallery else None
    clf = load_recognizer(
        args.model, threads=args.threads, gallery=(lambda: gallery) if gallery else None, threshold=args.threshold
    )
    files = image_files([Path(p) for p in args.paths])
    failed = 0
    for i in range(0, len(files), args.batch):
        chunk = files[i : i + args.batch]
        datas: list[bytes] = []
        for f in chunk:
            try:
                datas.append(f.read_bytes())
            except OSError as exc:
                datas.append(b"")
                print(f"{f}: cannot read: {exc.strerror}", file=sys.stderr)
        for f, res in zip(chunk, clf.classify(datas, top_k=args.top_k), strict=False):
            failed += isinstance(res, ImageError)
            print(_format(f, res, args.json))
    return 1 if failed else 0


def _format(path: Path, res: object, as_json: bool) -> str:
    from .model.classifier import Prediction

    if isinstance(res, ImageError):
        if as_json:
            return json.dumps({"file": str(path), "error": res.code, "reason": res.reason})
        return f"{path.name}: error: {res.reason}"
    assert isinstance(res, Prediction)
    if as_json:
        top = [{"label": t.label, "index": t.index, "probability": round(t.probability, 6)} for t in res.top]
        return json.dumps({"file": str(path), "label": res.label, "probability": round(res.probability, 6), "top": top})
    return f"{path.name}: {res.label} ({res.probability:.2f})"


def _cmd_enroll(args: argparse.Namespace) -> int:
    from .model.recognizer import faces_module

    root = Path(args.gallery_dir)
    out = Path(args.out) if args.out else root / "gallery.npz"
    gallery, problems, added = faces_module().enroll_folder(root, out)
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    people = ", ".join(f"{name} ({n})" for name, n in gallery.people().items())
    print(f"enrolled {added} new image(s) into {out}: {people or 'nobody'}")
    return 0 if gallery.names else 2


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .files import image_files
    from .messages import FACES
    from .model.builtin import resolve_model
    from .model.quantize import quantize

    if args.model == FACES:
        raise SpecError("quantize makes int8 image classifiers; the faces model is not one")
    files = image_files([Path(p) for p in args.calibration])[: args.limit]
    out = Path(args.out)
    n = quantize(resolve_model(args.model), files, out)
    print(f"int8 model calibrated on {n} image(s): serve it with --model {out}")
    return 0


def _cmd_bench_model(args: argparse.Namespace) -> int:
    from .files import image_files
    from .model.bench import run_bench

    files = image_files([Path(args.dir)])
    if not files:
        print(f"no images in {args.dir}", file=sys.stderr)
        return 2
    result = run_bench(args.model, files, args.batch, args.procs, args.threads, args.rounds, args.gallery)
    print(result.report())
    return 0


WEB_LIMITS = [
    "max_request_bytes",
    "spool_bytes",
    "max_json_bytes",
    "max_side",
    "max_aspect",
    "max_fetches",
    "max_connections",
    "header_timeout_s",
    "body_timeout_s",
    "max_backlog",
    "min_free_bytes",
]
SETTING_HELP = {
    "data_dir": "embedded queue file and blob directory (default ./iraas-data)",
    "host": "address to listen on (default 127.0.0.1)",
    "port": "port to listen on (default 8000)",
    "model": MODEL_HELP,
    "max_file_bytes": "largest accepted image, bytes (default 20 MiB)",
    "max_files": "most images per request (default 100)",
    "max_request_bytes": "largest request body, all files together, bytes (default 50 MiB)",
    "spool_bytes": "an upload past this many bytes waits on disk, not in RAM (default 1 MiB)",
    "max_json_bytes": "largest JSON body, bytes (default 64 KiB)",
    "max_pixels": "largest accepted image, pixels (default 50,000,000)",
    "max_side": "longest accepted image side, pixels (default 20,000)",
    "max_aspect": "most an image's long side may exceed its short side, times (default 20)",
    "timeout_s": "how long a waiting request waits for its answers (default 60)",
    "url_allow": "comma-separated hosts or CIDRs that URL intake may fetch despite being private",
    "url_timeout_s": "deadline for fetching one image URL, redirects included, seconds (default 10)",
    "max_fetches": "URL fetches in flight per web process (default 16)",
    "max_connections": "open connections per web process; past it 503 (default 1000)",
    "header_timeout_s": "a request's headers must arrive within this, seconds (default 10)",
    "body_timeout_s": "longest pause while a request body arrives, seconds (default 30)",
    "max_backlog": "images waiting past which new work gets 503 + Retry-After; 0 = no limit (default 10,000)",
    "store_timeout_s": "a locked queue file refuses new work (503) after this, seconds (default 5)",
    "min_free_bytes": "below this free on the data disk: not ready, uploads 507 (default 256 MiB)",
    "input_ttl_s": "embedded store: uploaded images are deleted after this, seconds (default 1 day)",
    "result_ttl_s": "embedded store: results are deleted after this, seconds (default 7 days)",
    "visibility_s": "seconds a received request stays hidden before a retry; a live worker extends it (default 10)",
    "max_receives": "deliveries before a request is given up as failed (default 3)",
    "batch_size": "most requests per inference call (default 4: as fast per image as 8, less memory)",
    "batch_wait_s": "extra wait for a fuller batch once one request arrived (default 0)",
    "threads": "onnxruntime threads per worker process (default 1)",
    "heartbeat_s": "seconds between worker heartbeats (default 1)",
    "worker_max_idle_s": "a worker exits after this long idle; 0 = never (default 0)",
    "warm_start": "fork local workers from a template process that has loaded the model (default on)",
    "warm_pool": "AWS: scaled-in workers kept stopped (disk cost only), to start in seconds; at most (default 0)",
    "min_workers": "workers kept running when idle (default 0)",
    "max_workers": "most workers (default: CPU count)",
    "target_per_worker": "backlog one worker should hold before another is started (default 8)",
    "scale_in_after_s": "idle period before workers are stopped (default 10)",
    "tick_s": "seconds between controller decisions (default 0.25)",
    "heartbeat_stale_s": "a worker silent this long is replaced (default 15)",
    "start_grace_s": "time a new worker has to send its first heartbeat (default 30)",
    "backend": "embedded (SQLite + directory, local processes; default) or aws (SQS + S3 + EC2)",
    "name": "AWS deployment name: queues <name>-requests…, instance tags (default iraas)",
    "bucket": "AWS: the deployment's S3 bucket (iraas aws status prints it)",
    "aws_region": "AWS region (default: the AWS SDK's)",
    "aws_endpoint_url": "AWS endpoint override, for moto or LocalStack",
    "launch_template": "AWS: worker launch template (default <name>-worker)",
    "gallery": GALLERY_HELP,
    "face_threshold": "faces: answer unknown below this similarity (default 0: off)",
    "webhook_secret": "whsec_… key that signs webhooks (several, space-separated, all sign: a rotation); "
    "pass it as IRAAS_WEBHOOK_SECRET, not a flag others can read in ps (iraas webhook-secret makes one)",
    "webhook_secret_arn": "AWS: the Secrets Manager secret that holds the webhook secret, read at start "
    "(iraas aws deploy makes one per deployment and sets this)",
    "webhook_timeout_s": "one webhook delivery attempt, seconds (default 10)",
    "webhook_backoff_s": "delay before a webhook's first retry, doubled each time, with jitter (default 5)",
    "webhook_backoff_max_s": "longest delay between two webhook attempts, seconds (default 3600)",
    "webhook_retry_for_s": "webhook retries stop this long after the result, seconds (default 1 day)",
    "webhook_concurrency": "webhook deliveries in flight (default 16)",
    "log_format": "text (default) or json: one object per line, with request_id and traceparent",
    "course_paths": "comma-separated URL paths of the course contract's POST (default /), e.g. /,/upload",
    "course_reply": "what a course POST answers: name:label (2024 clients; default) or label (2022 faces clients)",
    "auth": "API keys: auto (required once a key exists or off loopback; default), required, or off",
    "anonymous_course": "let POST / (the course clients' contract) be used without a key, rate limited like one key",
    "allowed_hosts": "comma-separated Host names served (default: loopback names on loopback, any otherwise)",
    "allowed_origins": "comma-separated origins of other sites' pages allowed to POST (default none)",
    "requests_per_s": "requests per second per key (and for anonymous course callers together) (default 20)",
    "images_per_s": "images per second per key (default 50)",
    "images_per_day": "images per key per UTC day (default 100,000)",
    "burst_s": "a key may spend this many seconds of its rates at once (default 10)",
}
BOOLEAN = {"anonymous_course"}
NEGATED = {"warm_start": "start each local worker as a new interpreter (~0.5 s), with no template process"}
ACCESS = [
    "auth",
    "anonymous_course",
    "allowed_hosts",
    "allowed_origins",
    "requests_per_s",
    "images_per_s",
    "images_per_day",
    "burst_s",
]
KEYS_SETTINGS = ["data_dir", *AWS_SETTINGS]
WEB_ONLY = {
    "host",
    "port",
    "max_file_bytes",
    "max_files",
    "url_allow",
    "url_timeout_s",
    "timeout_s",
    "course_paths",
    "course_reply",
    *WEB_LIMITS,
    *ACCESS,
}
SERVICE_SETTINGS = {
    "up": list(SETTING_HELP),
    "web": [
        *AWS_SETTINGS,
        "gallery",
        "data_dir",
        "host",
        "port",
        "model",
        "max_file_bytes",
        "max_files",
        "max_pixels",
        "timeout_s",
        "course_paths",
        "course_reply",
        "url_allow",
        "url_timeout_s",
        "max_receives",
        *WEB_LIMITS,
        *ACCESS,
        "store_timeout_s",
        "result_ttl_s",
        "webhook_secret",
        "webhook_secret_arn",
        "log_format",
    ],
    "worker": [
        *AWS_SETTINGS,
        "face_threshold",
        "data_dir",
        "model",
        "max_pixels",
        "max_side",
        "max_aspect",
        "store_timeout_s",
        "visibility_s",
        "max_receives",
        "batch_size",
        "batch_wait_s",
        "threads",
        "heartbeat_s",
        "worker_max_idle_s",
        "log_format",
    ],
    "controller": [
        k for k in SETTING_HELP if k in ("input_ttl_s", "result_ttl_s", "store_timeout_s") or k not in WEB_ONLY
    ],
}


def _add_settings(p: argparse.ArgumentParser, names: list[str]) -> None:
    p.add_argument("--config", help="TOML file of settings (also IRAAS_CONFIG); flags and IRAAS_* variables win")
    for name in names:
        flag = "--" + name.replace("_", "-")
        if name in NEGATED:
            flag = "--no-" + name.replace("_", "-")
            p.add_argument(flag, dest=name, action="store_const", const="false", default=None, help=NEGATED[name])
        elif name in BOOLEAN:
            p.add_argument(flag, dest=name, action="store_const", const="true", default=None, help=SETTING_HELP[name])
        else:
            p.add_argument(flag, dest=name, default=None, help=SETTING_HELP[name])
    if "auth" in names:
        p.add_argument(
            "--no-auth",
            dest="auth",
            action="store_const",
            const="off",
            help="serve without API keys, even beyond loopback (a private network only; logged loudly)",
        )


def _cmd_service(args: argparse.Namespace) -> int:
    from . import serve
    from .config import load_settings
    from .parts import located, with_webhook_secret

    names = SERVICE_SETTINGS[args.command]
    settings = load_settings(args.config, **{n: getattr(args, n) for n in names})
    settings = located(settings)
    logs.configure(settings.log_format, args.verbose)  # a config file may name it
    settings = with_webhook_secret(settings)
    if args.command in ("up", "web"):
        serve.up(settings, with_controller=args.command == "up")
    else:
        getattr(serve, args.command)(settings)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .aws.cli import add_parser as add_aws
    from .keys_command import add_parser as add_keys
    from .loadgen.cli import add_parser as add_loadgen

    p = argparse.ArgumentParser(prog="iraas", description="Image Recognition as a Service")
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = p.add_subparsers(dest="command", required=True)
    _add_classify(sub)
    for name, text in (
        ("up", "run the service on this machine: web tier + controller + worker processes on demand"),
        ("web", "run the web tier alone (several may share one data dir / queue)"),
        ("worker", "run one worker (the app tier) until SIGTERM"),
        ("controller", "run the autoscaling controller alone, with local worker processes"),
    ):
        sp = sub.add_parser(name, help=text, description=text + ". Every setting also reads IRAAS_<NAME>.")
        _add_settings(sp, SERVICE_SETTINGS[name])
        sp.set_defaults(func=_cmd_service)
    add_keys(sub, KEYS_SETTINGS, _add_settings)
    add_loadgen(sub)
    add_aws(sub)
    _add_bench(sub)
    _add_quantize(sub)
    _add_client(sub)
    return p


def _add_client(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from .client.cli import add_parser

    add_parser(sub)
    w = sub.add_parser("webhook-secret", help="print a new webhook signing secret (whsec_…) for --webhook-secret")
    w.set_defaults(func=lambda _: print(new_secret()) or 0)


def _add_quantize(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = sub.add_parser(
        "quantize",
        help="build a static int8 (QDQ) version of a model, calibrated on your own images",
        description="Build a static int8 (QDQ) version of a model from calibration images like those it "
        "will serve (a few hundred are plenty), and write a model spec for --model. Writes NAME.toml, "
        "NAME.onnx and NAME.labels.json.",
    )
    q.add_argument("--calibration", required=True, nargs="+", metavar="DIR", help="image folders or files")
    q.add_argument("--out", required=True, metavar="NAME.toml", help="the model spec to write")
    q.add_argument("--model", default=None, help=MODEL_HELP)
    q.add_argument("--limit", type=int, default=500, help="most calibration images used (default 500)")
    q.set_defaults(func=_cmd_quantize)


def _add_classify(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    c = sub.add_parser("classify", help="classify image files or folders in this process")
    c.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    c.add_argument("--top-k", type=int, default=5, help="how many labels to compute (default 5)")
    c.add_argument("--json", action="store_true", help="print one JSON object per image")
    c.add_argument("--model", default=None, help=MODEL_HELP)
    c.add_argument("--batch", type=int, default=8, help="images per inference call (default 8)")
    c.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
    c.add_argument("--gallery", help=GALLERY_HELP)
    c.add_argument("--threshold", type=float, default=0.0, help="faces: answer unknown below this similarity")
    c.set_defaults(func=_cmd_classify)
    e = sub.add_parser("enroll", help="faces: enrol a folder per person into a gallery file")
    e.add_argument("gallery_dir", metavar="GALLERY_DIR", help="GALLERY_DIR/<person name>/*.jpg")
    e.add_argument("--out", help="gallery file (default GALLERY_DIR/gallery.npz); re-running adds only new images")
    e.set_defaults(func=_cmd_enroll)


def _add_bench(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="what", required=True)
    m = bsub.add_parser("model", help="in-process ceiling: decode + preprocess + inference images/s")
    m.add_argument("dir", nargs="?", default=str(DEFAULT_BENCH_DIR), help=f"image folder (default {DEFAULT_BENCH_DIR})")
    m.add_argument("--batch", type=int, default=8, help="images per inference call (default 8)")
    m.add_argument("--procs", type=int, default=0, help="processes (default: CPU count)")
    m.add_argument("--threads", type=int, default=1, help="onnxruntime threads per process (default 1)")
    m.add_argument("--rounds", type=int, default=1, help="passes over the folder per process (default 1)")
    m.add_argument("--model", default=None, help=MODEL_HELP)
    m.add_argument("--gallery", help=GALLERY_HELP)
    m.set_defaults(func=_cmd_bench_model)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        logs.configure(getattr(args, "log_format", None) or os.environ.get("IRAAS_LOG_FORMAT") or "text", args.verbose)
        return int(args.func(args))
    except (SpecError, ValueError) as exc:
        print(f"iraas: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
