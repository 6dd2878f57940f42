"""The `iraas` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .imaging import ImageError
from .model.spec import SpecError

DEFAULT_BENCH_DIR = Path("../shared/datasets/imagenet-sample/images")
MODEL_HELP = "built-in model name (efficientnet-lite0 [default], -lite1, -lite2) or a model spec file (TOML/JSON)"


def _cmd_classify(args: argparse.Namespace) -> int:
    from .bench import image_files
    from .model.builtin import resolve_model
    from .model.classifier import Classifier

    clf = Classifier(resolve_model(args.model), threads=args.threads)
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


def _cmd_bench_model(args: argparse.Namespace) -> int:
    from .bench import image_files, run_bench

    files = image_files([Path(args.dir)])
    if not files:
        print(f"no images in {args.dir}", file=sys.stderr)
        return 2
    result = run_bench(args.model, files, args.batch, args.procs, args.threads, args.rounds)
    print(result.report())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iraas", description="Image Recognition as a Service")
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("classify", help="classify image files or folders in this process")
    c.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    c.add_argument("--top-k", type=int, default=5, help="how many labels to compute (default 5)")
    c.add_argument("--json", action="store_true", help="print one JSON object per image")
    c.add_argument("--model", default=None, help=MODEL_HELP)
    c.add_argument("--batch", type=int, default=8, help="images per inference call (default 8)")
    c.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
    c.set_defaults(func=_cmd_classify)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="what", required=True)
    m = bsub.add_parser("model", help="in-process ceiling: decode + preprocess + inference images/s")
    m.add_argument("dir", nargs="?", default=str(DEFAULT_BENCH_DIR), help=f"image folder (default {DEFAULT_BENCH_DIR})")
    m.add_argument("--batch", type=int, default=8, help="images per inference call (default 8)")
    m.add_argument("--procs", type=int, default=0, help="processes (default: CPU count)")
    m.add_argument("--threads", type=int, default=1, help="onnxruntime threads per process (default 1)")
    m.add_argument("--rounds", type=int, default=1, help="passes over the folder per process (default 1)")
    m.add_argument("--model", default=None, help=MODEL_HELP)
    m.set_defaults(func=_cmd_bench_model)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        return int(args.func(args))
    except SpecError as exc:
        print(f"iraas: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
