"""Idle cores for a lone request: an image on more threads while the machine has cores free."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from iraas.config import load_settings
from iraas.model.builtin import resolve_model
from iraas.model.classifier import Classifier
from iraas.model.compare import tensors
from iraas.model.cores import Adaptive, idle_threads, runnable, threads_now, usable_cores
from iraas.model.runtime import Choice, Runtime, open_runtime

from .conftest import IMAGENET

PHOTOS = sorted((IMAGENET / "images").iterdir())


@pytest.mark.parametrize(
    ("running", "cores", "narrow", "wide", "expected"),
    [
        (1, 2, 1, 2, 2),  # only this worker runs: the other core is free
        (2, 2, 1, 2, 1),  # another thread runs: no core to spare
        (3, 8, 1, 4, 4),  # 2 others and 4 of ours fit in 8
        (6, 8, 1, 4, 1),  # 5 others and 4 of ours do not
        (None, 2, 1, 2, 1),  # the machine's load unknown: as before
        (1, 2, 2, 2, 2),  # idle threads no more than threads: nothing to borrow
        (1, 1, 1, 2, 1),  # one core: nothing to borrow
    ],
)
def test_threads_for_the_next_image(running: int | None, cores: int, narrow: int, wide: int, expected: int) -> None:
    assert threads_now(running, cores, narrow, wide) == expected


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("150000 100000\n", 1),  # a container limited to 1.5 CPUs: 1 whole core
        ("300000 100000\n", 3),
        ("50000 100000\n", 1),  # half a core: still 1
        ("max 100000\n", None),  # no limit: every core it may run on
        ("garbage", None),
        (None, None),  # no cgroup v2 file
    ],
)
def test_usable_cores_are_within_the_cpu_limit(tmp_path: Path, cpu_max: str | None, expected: int | None) -> None:
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    mine = len(os.sched_getaffinity(0))
    assert usable_cores(path) == (min(expected, mine) if expected else mine)


@pytest.mark.parametrize(("setting", "cores", "expected"), [(0, 2, 2), (0, 1, 1), (0, 32, 4), (8, 32, 8), (1, 32, 1)])
def test_idle_threads_default_to_the_cores_up_to_four(setting: int, cores: int, expected: int) -> None:
    assert idle_threads(setting, cores) == expected


def test_runnable_threads_are_read_from_the_kernel(tmp_path: Path) -> None:
    fake = tmp_path / "loadavg"
    fake.write_text("0.35 0.98 1.23 3/81 30117\n")
    assert runnable(fake) == 3
    fake.write_text("")
    assert runnable(fake) is None
    assert runnable(tmp_path / "absent") is None
    now = runnable()  # the machine's own: this test's thread at least
    assert now is not None and now >= 1


@pytest.fixture(scope="module")
def inputs() -> list[np.ndarray]:  # type: ignore[type-arg]
    return tensors(resolve_model(None), PHOTOS[:8])


def _opened(choice: Choice, threads: int) -> Runtime:
    return open_runtime(resolve_model(None).onnx_path, choice, threads, spin=False)


@pytest.mark.parametrize("choice", [Choice(), Choice("openvino", "bf16")], ids=str)
def test_an_image_runs_wide_only_while_the_cores_are_free_with_the_same_logits(
    inputs: list[np.ndarray],  # type: ignore[type-arg]
    choice: Choice,
) -> None:
    narrow = _opened(choice, 1)
    load = {"running": 1}
    adaptive = Adaptive(narrow, lambda: _opened(choice, 2), (1, 2), cores=2, running=lambda: load["running"])
    assert adaptive.opened.wait(timeout=120)
    for x in inputs:
        assert np.array_equal(adaptive.run(x), narrow.run(x))  # on 2 threads, the same numbers
    assert adaptive.wide_runs == len(inputs)
    load["running"] = 2  # another worker took the other core
    for x in inputs:
        adaptive.run(x)
    assert adaptive.wide_runs == len(inputs)  # none more


def test_a_wide_session_that_cannot_open_leaves_every_image_narrow(
    inputs: list[np.ndarray],  # type: ignore[type-arg]
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> Runtime:
        raise MemoryError("no room for a second session")

    narrow = _opened(Choice(), 1)
    with caplog.at_level(logging.WARNING, logger="iraas.model.cores"):
        adaptive = Adaptive(narrow, broken, (1, 2), cores=2, running=lambda: 1)
        assert adaptive.opened.wait(timeout=60)
    assert np.array_equal(adaptive.run(inputs[0]), narrow.run(inputs[0]))
    assert adaptive.wide_runs == 0
    assert "on 2 threads could not be opened: every image on 1" in caplog.text


def test_a_classifier_with_idle_threads_answers_as_one_without() -> None:
    spec = resolve_model(None)
    datas = [p.read_bytes() for p in PHOTOS[:12]]
    plain = Classifier(spec).classify(datas)
    wide = Classifier(spec, idle_threads=2, running=lambda: 1)  # the other core free for each image
    assert wide.adaptive is not None and wide.adaptive.opened.wait(timeout=60)
    assert wide.classify(datas) == plain
    assert wide.times.borrowed == len(datas)  # every image ran on both cores


def test_idle_threads_below_zero_are_refused() -> None:
    with pytest.raises(ValueError, match="idle_threads >= 0"):
        load_settings(idle_threads=-1)
