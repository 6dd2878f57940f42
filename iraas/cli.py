"""The `iraas` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import logs
from .config import help_of, log_format_from_env
from .imaging import ImageError
from .model.spec import SpecError
from .pg import DatabaseError
from .signing import new_secret

if TYPE_CHECKING:
    from .config import Settings

DEFAULT_BENCH_DIR = Path("../shared/datasets/imagenet-sample/images")


def _cmd_classify(args: argparse.Namespace) -> int:
    from .files import image_files
    from .model.recognizer import gallery_from_path, load_recognizer

    gallery = gallery_from_path(args.gallery) if args.gallery else None
    recognizer = load_recognizer(
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
        for f, res in zip(chunk, recognizer.classify(datas, top_k=args.top_k), strict=False):
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
    if args.runtimes:
        return _compare_runtimes(args, files)
    choice = (args.runtime or "", args.precision or "")
    result = run_bench(args.model, files, args.batch, args.procs, args.threads, args.rounds, args.gallery, choice)
    print(result.report())
    return 0


def _compare_runtimes(args: argparse.Namespace, files: list[Path]) -> int:
    from .messages import FACES
    from .model.builtin import resolve_model
    from .model.compare import compare, table
    from .model.runtime import RUNTIMES
    from .model.spec import load_spec

    runtimes = RUNTIMES if args.runtimes == "all" else tuple(args.runtimes.split(","))
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown:
        raise SpecError(f"--runtimes: all, or some of {', '.join(RUNTIMES)}; not {', '.join(sorted(unknown))}")
    if args.model == FACES:
        from .model.compare_faces import REFERENCE, compare_faces
        from .model.recognizer import gallery_from_path

        if not args.gallery:
            raise SpecError("the faces model needs a gallery (--gallery DIR or FILE): answers are people in it")
        rows = compare_faces(files, gallery_from_path(args.gallery), runtimes, args.threads)  # type: ignore[arg-type]
        print(table(rows, len(files), REFERENCE, "opencv", "person"))
        return 0
    quantized = load_spec(args.int8) if args.int8 else None
    rows = compare(resolve_model(args.model), files, runtimes, args.threads, quantized)
    print(table(rows, len(files)))
    return 0


def _add_settings(p: argparse.ArgumentParser, command: str) -> None:
    """A flag for every setting `command` takes, from its declaration (iraas/config.py)."""
    from .config import declared

    p.add_argument("--config", help="TOML file of settings (also IRAAS_CONFIG); flags and IRAAS_* variables win")
    for f in declared(command):
        name, meta = f.name, f.metadata
        flag = "--" + name.replace("_", "-")
        if meta["flag"] == "negate":
            flag = "--no-" + name.replace("_", "-")
            p.add_argument(flag, dest=name, action="store_const", const="false", default=None, help=meta["negated"])
        elif meta["flag"] == "switch":
            p.add_argument(flag, dest=name, action="store_const", const="true", default=None, help=meta["help"])
        else:
            p.add_argument(flag, dest=name, default=None, help=meta["help"])
    if any(f.name == "auth" for f in declared(command)):
        p.add_argument(
            "--no-auth",
            dest="auth",
            action="store_const",
            const="off",
            help="serve without API keys, even beyond loopback (a private network only; logged loudly)",
        )


def settings_from(args: argparse.Namespace, command: str) -> Settings:
    """The settings of `command`: its flags over IRAAS_* variables over the TOML file."""
    from .config import declared, load_settings

    return load_settings(args.config, **{f.name: getattr(args, f.name) for f in declared(command)})


def _cmd_service(args: argparse.Namespace) -> int:
    from . import serve
    from .parts import located, with_webhook_secret

    settings = located(settings_from(args, args.command))
    logs.configure(settings.log_format, args.verbose)  # a config file may name it
    settings = with_webhook_secret(settings)
    if args.command in ("up", "web"):
        serve.up(settings, with_controller=args.command == "up")
    elif args.command == "worker":
        serve.worker(settings, worker_id=args.worker_id, parent=args.parent_pid)
    else:
        serve.controller(settings)
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
        _add_settings(sp, name)
        if name == "worker":
            sp.add_argument(
                "--worker-id", help="this worker's id in heartbeats (default: host-pid, or the EC2 instance)"
            )
            sp.add_argument("--parent-pid", type=int, help="stop when this process ends (set by a local fleet)")
        sp.set_defaults(func=_cmd_service)
    add_keys(sub, _add_settings, settings_from)
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
    q.add_argument("--model", default=None, help=help_of("model"))
    q.add_argument("--limit", type=int, default=500, help="most calibration images used (default 500)")
    q.set_defaults(func=_cmd_quantize)


def _add_classify(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    c = sub.add_parser("classify", help="classify image files or folders in this process")
    c.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    c.add_argument("--top-k", type=int, default=5, help="how many labels to compute (default 5)")
    c.add_argument("--json", action="store_true", help="print one JSON object per image")
    c.add_argument("--model", default=None, help=help_of("model"))
    c.add_argument("--batch", type=int, default=8, help="images per inference call (default 8)")
    c.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
    c.add_argument("--gallery", help=help_of("gallery"))
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
    m.add_argument("--model", default=None, help=help_of("model"))
    m.add_argument("--gallery", help=help_of("gallery"))
    m.add_argument("--runtime", help=help_of("runtime"))
    m.add_argument("--precision", help=help_of("precision"))
    m.add_argument(
        "--runtimes",
        help="instead: each runtime and precision this machine runs the model on (all, or e.g. openvino), "
        "with top-1 agreement with fp32 on these images and the one to use",
    )
    m.add_argument("--int8", help="with --runtimes: the model's quantized spec (iraas quantize), measured too")
    m.set_defaults(func=_cmd_bench_model)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        logs.configure(getattr(args, "log_format", None) or log_format_from_env(), args.verbose)
        return int(args.func(args))
    except (SpecError, ValueError, DatabaseError) as exc:
        print(f"iraas: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
