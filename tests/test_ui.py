"""The browser page, in headless Chromium (Debian's package) driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from iraas.model.classifier import Classifier

from .conftest import IMAGENET
from .service import Service

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Service]:
    service = Service(tmp_path / "data", max_workers=2).start()
    yield service
    service.stop()


def test_upload_three_images_and_see_three_labels(svc: Service, classifier: Classifier) -> None:
    files = sorted((IMAGENET / "images").iterdir())[:3]
    labels = [p.label for p in classifier.predict([f.read_bytes() for f in files])]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(svc.url + "/")
            page.set_input_files("#files", [str(f) for f in files])
            page.wait_for_function("document.querySelectorAll('.card[data-label]').length === 3", timeout=60_000)
            shown = page.eval_on_selector_all(
                ".card",
                "cs => cs.map(c => [c.querySelector('.name').textContent, "
                "c.dataset.label, c.querySelectorAll('li').length])",
            )
            assert sorted(shown) == sorted([f.name, label, 5] for f, label in zip(files, labels, strict=True))
            page.wait_for_function("document.getElementById('cluster').textContent.includes('workers')")
        finally:
            browser.close()
