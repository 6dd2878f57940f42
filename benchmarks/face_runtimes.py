"""The faces model's embedding network (SFace) on each runtime, on the held-out people.

    python benchmarks/face_runtimes.py [--rounds 3]

Each photo of ../shared/datasets/faces-identities is detected and aligned once (OpenCV, as the
service does); then each runtime embeds every face one at a time on one thread, as a worker
does, in interleaved rounds. Printed: the median ms a face, the lowest cosine similarity to
OpenCV's embedding, and the share of held-out photos recognised (one photo a person enrolled).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iraas.model.compare_faces import faces  # noqa: E402
from iraas.model.faces import FaceEmbedder  # noqa: E402

IDS = ROOT.parent / "shared" / "datasets" / "faces-identities"
RUNTIMES = {"opencv fp32 (default)": ("", ""), "onnxruntime fp32": ("onnxruntime", "fp32")}
RUNTIMES |= {"openvino fp32": ("openvino", "fp32"), "openvino bf16": ("openvino", "bf16")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with open(IDS / "labels.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["filename"])
    who = [r["identity"] for r in rows]
    crops = faces(FaceEmbedder(), [IDS / "images" / r["filename"] for r in rows])
    assert len(crops) == len(who), "every photo is readable"
    embedders = {name: FaceEmbedder(1, *choice) for name, choice in RUNTIMES.items()}
    times: dict[str, list[float]] = {name: [] for name in embedders}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        for name, e in embedders.items():
            e.embed(crops[:1])  # warm
            out = []
            for crop in crops:
                t = time.perf_counter()
                out.append(e.embed([crop]))
                times[name].append(time.perf_counter() - t)
            vectors[name] = np.concatenate(out)
    reference = vectors["opencv fp32 (default)"]
    print(f"SFace, {len(crops)} faces, 1 thread, one at a time, {args.rounds} interleaved rounds (medians)")
    print(f"{'runtime':<24} {'ms a face':>9} {'vs opencv':>9} {'min cosine':>10} {'recognised':>10}")
    base = statistics.median(times["opencv fp32 (default)"])
    for name, vec in vectors.items():
        ms = statistics.median(times[name])
        cos = float(np.min(np.sum(vec * reference, axis=1)))
        print(f"{name:<24} {1000 * ms:>9.2f} {base / ms:>8.2f}x {cos:>10.5f} {_recognised(vec, who):>9.1%}")


def _recognised(vec: np.ndarray, who: list[str]) -> float:
    """Each person's first photo enrolled; the share of their other photos answered right."""
    first = {p: i for i, p in reversed(list(enumerate(who)))}
    names = list(first)
    gallery = vec[[first[p] for p in names]]
    probes = [i for i in range(len(who)) if first[who[i]] != i]
    right = sum(names[int(np.argmax(gallery @ vec[i]))] == who[i] for i in probes)
    return right / len(probes)


if __name__ == "__main__":
    main()
