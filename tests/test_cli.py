"""The `iraas` command as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from iraas.config.loading import MOST_PER_RECEIVE
from iraas.queues.base import MAX_BATCH

from .conftest import IMAGENET

IMAGES = IMAGENET / "images"


def _iraas(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iraas.cli", *args], capture_output=True, text=True, timeout=300)


def test_classify_prints_label_and_confidence(tmp_path: Path) -> None:
    shutil.copy(IMAGES / "n01440764_tench.JPEG", tmp_path / "fish.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"<html></html>")
    out = _iraas("classify", str(tmp_path / "fish.jpg"), str(IMAGES / "n01484850_great_white_shark.JPEG"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("fish.jpg: tench (0.")
    assert lines[1].startswith("n01484850_great_white_shark.JPEG: great white shark (")
    folder = _iraas("classify", "--json", "--top-k", "3", str(tmp_path))
    assert folder.returncode == 1  # one file was not an image
    records = {Path(r["file"]).name: r for r in map(json.loads, folder.stdout.splitlines())}
    assert records["bad.jpg"]["error"] == "unsupported_format"
    assert records["fish.jpg"]["label"] == "tench" and len(records["fish.jpg"]["top"]) == 3


def test_unknown_model_is_a_clear_error() -> None:
    out = _iraas("classify", "--model", "nope", str(IMAGES / "n01440764_tench.JPEG"))
    assert out.returncode == 2 and "unknown model 'nope'" in out.stderr


def test_bench_model_prints_figures(tmp_path: Path) -> None:
    for f in sorted(IMAGES.iterdir())[:8]:
        shutil.copy(f, tmp_path / f.name)
    out = _iraas("bench", "model", str(tmp_path), "--procs", "1", "--batch", "4")
    assert out.returncode == 0, out.stderr
    assert "8 images in" in out.stdout and "img/s" in out.stdout and "inference" in out.stdout


def test_course_settings_that_cannot_work_refuse_to_start(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    shadow = _iraas("up", *data, "--course-paths", "/upload,/v1/recognitions")
    assert shadow.returncode == 2 and "'/v1/recognitions' is one of the service's own routes" in shadow.stderr
    odd = _iraas("up", *data, "--course-paths", "upload")
    assert odd.returncode == 2 and "not a plain URL path" in odd.stderr
    reply = _iraas("up", *data, "--course-reply", "json")
    assert reply.returncode == 2 and "course_reply must be name:label or label" in reply.stderr


def test_scaling_settings_that_cannot_work_refuse_to_start(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    inverted = _iraas("up", *data, "--cpu-high", "0.2", "--cpu-low", "0.5")
    assert inverted.returncode == 2 and "0 <= cpu_low <= cpu_high <= 1" in inverted.stderr
    negative = _iraas("up", *data, "--target-wait-s", "-1")
    assert negative.returncode == 2 and "target_wait_s >= 0" in negative.stderr
    shown = _iraas("up", "--help")
    assert "--target-wait-s" in shown.stdout and "--cpu-high" in shown.stdout


def test_a_batch_no_queue_call_can_take_refuses_to_start(tmp_path: Path) -> None:
    """Past what one receive takes, every receive of the worker would be refused: it would retry
    forever without answering anything."""
    too_big = _iraas("up", "--data-dir", str(tmp_path), "--batch-size", str(MAX_BATCH + 1))
    assert too_big.returncode == 2 and f"1 <= batch_size <= {MAX_BATCH}" in too_big.stderr
    assert MOST_PER_RECEIVE == MAX_BATCH  # the settings' copy of the queues' limit


def test_a_durability_it_does_not_know_refuses_to_start(tmp_path: Path) -> None:
    refused = _iraas("up", "--data-dir", str(tmp_path), "--durability", "disk")
    assert refused.returncode == 2 and "durability must be process or power" in refused.stderr
