"""int8 against fp32: the in-process ceiling and top-1, calibrated on some photos, scored on the others.

    python benchmarks/int8.py [--calibrate-every 5] [--rounds 3]

Every 5th of the shared 500 ImageNet photos (100) calibrates `iraas quantize`; the other 400
are scored by both models (top-1 against the photos' labels) and run through the in-process
ceiling (`iraas bench model`: 2 processes, batch 8), fp32 and int8 interleaved, medians printed.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iraas.model.bench import run_bench  # noqa: E402
from iraas.model.builtin import resolve_model  # noqa: E402
from iraas.model.classifier import Classifier  # noqa: E402
from iraas.model.quantize import quantize  # noqa: E402
from iraas.model.spec import load_spec  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "datasets" / "imagenet-sample"


def top1(clf: Classifier, files: list[Path], truth: dict[str, int]) -> float:
    right = 0
    for i in range(0, len(files), 16):
        chunk = files[i : i + 16]
        for f, p in zip(chunk, clf.predict([f.read_bytes() for f in chunk]), strict=True):
            right += p.top[0].index == truth[f.name]
    return 100.0 * right / len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibrate-every", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with open(SAMPLE / "labels.csv", newline="") as f:
        truth = {r["filename"]: int(r["class_index"]) for r in csv.DictReader(f)}
    photos = sorted((SAMPLE / "images").iterdir())
    calibration = photos[1 :: args.calibrate_every]
    held_out = [p for p in photos if p not in set(calibration)]
    fp32 = resolve_model(None)
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "lite0-int8.toml"
        t = time.perf_counter()
        n = quantize(fp32, calibration, spec_path)
        print(f"quantized on {n} calibration photos in {time.perf_counter() - t:.1f} s")
        int8 = load_spec(spec_path)
        acc = {"fp32": top1(Classifier(fp32), held_out, truth), "int8": top1(Classifier(int8), held_out, truth)}
        speed: dict[str, list[float]] = {"fp32": [], "int8": []}
        for _ in range(args.rounds):
            for name, model in (("fp32", None), ("int8", str(spec_path))):
                speed[name].append(run_bench(model, held_out, batch=8, procs=2).images_per_s)
    for name in ("fp32", "int8"):
        runs = ", ".join(f"{x:.1f}" for x in speed[name])
        print(f"{name}: top-1 {acc[name]:.2f} % on {len(held_out)} held-out photos; ceiling {runs} img/s")
    gain = statistics.median(speed["int8"]) / statistics.median(speed["fp32"])
    print(f"int8 / fp32 ceiling (medians): {gain:.2f}x; top-1 change {acc['int8'] - acc['fp32']:+.2f} points")


if __name__ == "__main__":
    main()
