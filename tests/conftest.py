from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("IRAAS_DATASETS", ROOT.parent / "shared" / "datasets"))
IMAGENET = DATASETS / "imagenet-sample"


@pytest.fixture(scope="session")
def imagenet_rows() -> list[dict[str, str]]:
    with open(IMAGENET / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def classifier():  # type: ignore[no-untyped-def]
    from iraas.model.builtin import resolve_model
    from iraas.model.classifier import Classifier

    return Classifier(resolve_model(None))
