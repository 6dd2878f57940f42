"""The model on each runtime and precision: the in-process ceiling (decode, preprocess,
inference; 2 processes, batch 4 as the worker runs) in interleaved rounds, and top-1 against
the true labels of the shared 500 photos. Beside each ceiling, the same runs' inference alone
(ms an image, per process): the runtimes themselves, before decoding and preprocessing, which
are the same for all, dilute the difference.

    python benchmarks/runtimes.py [--rounds 3] [--int8 lite0-int8.toml]

`--int8`: a quantized spec (`iraas quantize`), measured on both runtimes too.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iraas.files import image_files  # noqa: E402
from iraas.model.bench import run_bench  # noqa: E402
from iraas.model.builtin import resolve_model  # noqa: E402
from iraas.model.classifier import Classifier  # noqa: E402
from iraas.model.spec import load_spec  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "datasets" / "imagenet-sample"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--int8", help="a quantized spec (iraas quantize)")
    args = ap.parse_args()
    files = image_files([SAMPLE / "images"])
    with open(SAMPLE / "labels.csv", newline="") as f:
        truth = {r["filename"]: int(r["class_index"]) for r in csv.DictReader(f)}
    runs = [(None, "onnxruntime", "fp32"), (None, "openvino", "fp32"), (None, "openvino", "bf16")]
    if args.int8:
        runs += [(args.int8, "onnxruntime", "int8"), (args.int8, "openvino", "int8")]
    rates: dict[tuple[str | None, str, str], list[float]] = {r: [] for r in runs}
    infer: dict[tuple[str | None, str, str], list[float]] = {r: [] for r in runs}
    for _ in range(args.rounds):
        for model, runtime, precision in runs:
            result = run_bench(model, files, batch=4, procs=2, choice=(runtime, precision))
            rates[(model, runtime, precision)].append(result.images_per_s)
            infer[(model, runtime, precision)].append(1000 * result.times.inference / max(result.times.images, 1))
    base = statistics.median(rates[runs[0]])
    head = f"{'runtime':12} {'precision':9} {'ceiling img/s':>14} {'vs fp32':>8} {'inference ms':>13} {'top-1':>7}"
    print(head + "   rounds")
    for model, runtime, precision in runs:
        spec = load_spec(model) if model else resolve_model(None)
        clf = Classifier(spec, runtime=runtime, precision=precision)
        preds = clf.predict([p.read_bytes() for p in files])
        top1 = 100 * sum(p.top[0].index == truth[f.name] for f, p in zip(files, preds, strict=True)) / len(files)
        med = statistics.median(rates[(model, runtime, precision)])
        ms = statistics.median(infer[(model, runtime, precision)])
        each = " ".join(f"{r:.0f}" for r in rates[(model, runtime, precision)])
        print(f"{runtime:12} {precision:9} {med:14.1f} {med / base:8.2f} {ms:13.2f} {top1:6.1f}%   {each}")


if __name__ == "__main__":
    main()
