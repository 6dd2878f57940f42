"""The browser page, in headless Chromium (Debian's package) driven by Playwright. The page runs
under its own Content-Security-Policy (no inline script): the tests wait with locators, which
need no `eval`, and fail on any CSP violation the browser reports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from iraas.model.classifier import Classifier

from .conftest import IMAGENET
from .service import Service, create_key

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
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


def _page(browser: Browser) -> tuple[Page, list[str]]:
    page = browser.new_page()
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    return page, violations


def _upload_and_read(page: Page, files: list[Path]) -> list[list[object]]:
    page.set_input_files("#files", [str(f) for f in files])
    expect(page.locator(".card[data-label]")).to_have_count(len(files), timeout=60_000)
    shown: list[list[object]] = page.eval_on_selector_all(
        ".card",
        "cs => cs.map(c => [c.querySelector('.name').textContent, c.dataset.label, c.querySelectorAll('li').length])",
    )
    return shown


def test_upload_three_images_and_see_three_labels(tmp_path: Path, browser: Browser, classifier: Classifier) -> None:
    svc = Service(tmp_path / "data", max_workers=2).start()
    try:
        files = sorted((IMAGENET / "images").iterdir())[:3]
        labels = [p.label for p in classifier.predict([f.read_bytes() for f in files])]
        page, violations = _page(browser)
        page.goto(svc.url + "/")  # loopback, no key created: no sign-in
        expect(page.locator("#signin")).to_be_hidden()
        shown = _upload_and_read(page, files)
        assert sorted(shown) == sorted([f.name, label, 5] for f, label in zip(files, labels, strict=True))
        expect(page.locator("#cluster")).to_contain_text("workers")
        assert violations == []
    finally:
        svc.stop()


def test_signing_in_with_a_key_and_a_refused_wrong_key(
    tmp_path: Path, browser: Browser, classifier: Classifier
) -> None:
    data = tmp_path / "data"
    key = create_key(data, "alice")
    svc = Service(data, max_workers=1).start()
    try:
        page, violations = _page(browser)
        page.goto(svc.url + "/")
        expect(page.locator("#signin")).to_be_visible()  # a key exists: the page asks for one
        expect(page.locator("#app")).to_be_hidden()
        page.fill("#key", key[:-4] + "AAAA")
        page.click("#signin button")
        expect(page.locator("#signin-error")).to_contain_text("refused")
        expect(page.locator("#app")).to_be_hidden()

        page.fill("#key", key)
        page.click("#signin button")
        expect(page.locator("#app")).to_be_visible()
        expect(page.locator("#whoname")).to_have_text("alice (recognize)")
        photo = sorted((IMAGENET / "images").iterdir())[0]
        (label,) = [p.label for p in classifier.predict([photo.read_bytes()])]
        assert _upload_and_read(page, [photo]) == [[photo.name, label, 5]]
        assert page.evaluate("sessionStorage.getItem('iraas-key')") == key  # this tab only
        assert page.evaluate("localStorage.length") == 0

        page.reload()  # kept for the tab's life: no second sign-in
        expect(page.locator("#app")).to_be_visible()
        page.click("#signout")
        expect(page.locator("#signin")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('iraas-key')") is None
        assert violations == []
    finally:
        svc.stop()


def test_the_cluster_panel_charts_the_load_lists_decisions_and_downloads_the_results(
    tmp_path: Path, browser: Browser, classifier: Classifier
) -> None:
    svc = Service(tmp_path / "data", max_workers=2, scale_in_after_s=1).start()
    try:
        files = sorted((IMAGENET / "images").iterdir())[50:54]
        labels = [p.label for p in classifier.predict([f.read_bytes() for f in files])]
        page, violations = _page(browser)
        page.goto(svc.url + "/")
        _upload_and_read(page, files)
        expect(page.locator("#table tbody tr")).to_have_count(4)
        # the controller scaled out for them and back in: both decisions, with their reasons
        expect(page.locator("#decisions li")).not_to_have_count(0, timeout=30_000)
        expect(page.locator("#decisions")).to_contain_text("→ 0", timeout=30_000)
        assert _charted(page, "workers") and _charted(page, "waiting")  # the burst shows on both lines
        with page.expect_download() as download:
            page.click("#csv")
        assert download.value.suggested_filename == "iraas-results.csv"
        text = Path(download.value.path()).read_text()
        import csv

        header, *rows = list(csv.reader(text.splitlines()))
        assert header == ["file", "status", "label", "confidence", "seconds", "id"]
        assert sorted((r[0], r[1], r[2]) for r in rows) == sorted(
            (f.name, "done", label) for f, label in zip(files, labels, strict=True)
        )
        assert all(len(r[5]) == 32 and 0 < float(r[3]) <= 1 for r in rows)
        assert violations == []
    finally:
        svc.stop()


def _charted(page: Page, series: str, timeout: float = 30) -> bool:
    """The chart's line for `series` has points, one of them above zero (y 136 is zero)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        points = (page.locator(f'#chart [data-series="{series}"]').get_attribute("points") or "").split()
        if len(points) >= 2 and any(float(p.split(",")[1]) < 136 for p in points):
            return True
        time.sleep(0.5)
    return False
