"""End to end in headless Debian Chromium (Playwright for Python): what a doctor's browser does.

Every request the page makes is recorded; none may leave the machine (hospital network, no
internet): no analytics, no web fonts, no CDN.
"""

import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from gate_helpers import ADULT_FILM, CT, KNEE, gated_model_dir
from PIL import Image
from playwright.sync_api import expect, sync_playwright
from skimage import data

from hfxray import DISCLAIMER
from hfxray.space_app import REFUSED_TEXT, spawn_server

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path("/tmp/hfxray_space_browser.png")


@pytest.fixture(scope="module")
def server_url(bundled_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("space-browser")
    # the bundled model once it ships gate v2; until then a copy with a small gate v2 fitted here
    model_dir = gated_model_dir(bundled_model_dir, tmp / "gated-model")
    proc, url = spawn_server(
        model_dir,
        env={"GRADIO_TEMP_DIR": str(tmp / "gradio")},
        log_path=tmp / "server.log",
    )
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page_and_requests(server_url):
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.on("request", lambda r: requests.append(r.url))
        page.set_default_timeout(60_000)
        page.goto(server_url, wait_until="load")
        page.get_by_text(DISCLAIMER).first.wait_for()
        yield page, requests
        browser.close()


def _upload_and_analyse(page, path: Path) -> None:
    clear = page.locator("#single-file button[aria-label='Clear']")
    if clear.count():  # a file is already there: remove it to get the upload area back
        clear.first.click()
        expect(clear).to_have_count(0, timeout=30_000)  # under load the old file box lingers a moment
    page.locator("#single-file input[type=file]").set_input_files(str(path))
    page.locator("#single-file").get_by_text(path.name).first.wait_for(timeout=30_000)
    page.locator("#single-button").click()


def test_upload_a_radiograph_shows_probabilities_and_heatmap(page_and_requests, shared_data):
    page, _ = page_and_requests
    expect(page.get_by_text(DISCLAIMER).first).to_be_visible()
    xray = sorted((shared_data / "Normal").iterdir())[2]
    _upload_and_analyse(page, xray)
    result = page.locator("#single-result")
    expect(result).to_contain_text("%", timeout=120_000)
    expect(result).to_contain_text(DISCLAIMER)
    label = page.locator("#single-label")
    for cls in ("Covid", "Normal", "Viral Pneumonia"):
        expect(label).to_contain_text(cls)
    heatmap = page.locator("#single-image img")
    expect(heatmap).to_be_visible()
    assert heatmap.evaluate("img => img.naturalWidth") > 100
    # the checkbox switches to the image without the overlay (a different picture)
    with_heat = heatmap.get_attribute("src")
    page.locator("#single-heat input[type=checkbox]").uncheck()
    expect(page.locator("#single-image img")).not_to_have_attribute("src", with_heat, timeout=30_000)
    page.locator("#single-heat input[type=checkbox]").check()
    expect(page.locator("#single-image img")).to_have_attribute("src", with_heat, timeout=30_000)
    page.wait_for_timeout(1500)  # let the image finish painting before the screenshot
    page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_upload_a_photo_shows_the_warning(page_and_requests, tmp_path):
    page, _ = page_and_requests
    photo = tmp_path / "holiday_photo.png"
    Image.fromarray(data.astronaut()).save(photo)
    _upload_and_analyse(page, photo)
    result = page.locator("#single-result")
    expect(result).to_contain_text(REFUSED_TEXT, timeout=120_000)
    expect(result).to_contain_text("colour photograph")  # the reason, in the result
    expect(page.locator("#single-warnings textarea")).not_to_have_value(re.compile("colour photograph"))
    page.wait_for_timeout(500)
    page.screenshot(path=str(SCREENSHOT.with_name("hfxray_space_browser_photo.png")), full_page=True)


@pytest.mark.parametrize("path", [KNEE, CT], ids=["knee-radiograph", "ct-slice"])
def test_other_medical_images_are_refused(page_and_requests, path, tmp_path):
    """A knee film and a CT slice (out of the small test gate's fit; the bundled gate saw every not-cxr
    image, docs/gate.md has its held-out numbers): refused, no class, the reason shown."""
    page, _ = page_and_requests
    upload = tmp_path / f"{path.parent.name}{path.suffix}"  # the upload box shortens long file names
    shutil.copyfile(path, upload)
    _upload_and_analyse(page, upload)
    result = page.locator("#single-result")
    expect(result).to_contain_text(REFUSED_TEXT, timeout=120_000)
    expect(result).to_contain_text("not a frontal chest radiograph (chest-film score")
    expect(result).to_contain_text(DISCLAIMER)
    label = page.locator("#single-label")
    expect(label).to_contain_text(REFUSED_TEXT)
    expect(label).not_to_contain_text("Viral Pneumonia")  # no class probabilities
    expect(page.locator("#single-warnings textarea")).not_to_have_value(re.compile("chest-film score"))
    page.wait_for_timeout(500)
    page.screenshot(path=str(SCREENSHOT.with_name(f"hfxray_space_browser_{path.parent.name}.png")), full_page=True)


def test_adult_film_from_another_hospital_gets_probabilities(page_and_requests):
    """An adult film from a Spanish hospital (cxr-multisource): answered, with probabilities."""
    page, _ = page_and_requests
    _upload_and_analyse(page, ADULT_FILM)
    result = page.locator("#single-result")
    expect(result).to_contain_text("%", timeout=120_000)
    expect(result).not_to_contain_text(REFUSED_TEXT)
    label = page.locator("#single-label")
    for cls in ("Covid", "Normal", "Viral Pneumonia"):
        expect(label).to_contain_text(cls)
    # a warning (e.g. "unlike the films this model was trained on") goes to its own element, if any
    expect(page.locator("#single-warnings")).to_be_visible()
    page.wait_for_timeout(500)
    page.screenshot(path=str(SCREENSHOT.with_name("hfxray_space_browser_adult.png")), full_page=True)


def test_batch_tab_shows_a_gallery_and_a_csv(page_and_requests, shared_data):
    page, _ = page_and_requests
    page.get_by_role("tab", name="Several images").click()
    films = [sorted((shared_data / c).iterdir())[5] for c in ("Covid", "Viral Pneumonia")]
    page.locator("#batch-files input[type=file]").set_input_files([str(p) for p in films])
    for film in films:  # the component shows stem and suffix in separate elements
        pattern = re.compile(re.escape(film.stem) + r"\s*" + re.escape(film.suffix))
        expect(page.locator("#batch-files")).to_contain_text(pattern, timeout=30_000)
    page.locator("#batch-button").click()
    expect(page.locator("#batch-gallery img")).to_have_count(2, timeout=120_000)
    expect(page.locator("#batch-csv")).to_contain_text(
        re.compile(r"hfxray_predictions\s*\.csv"), timeout=30_000
    )
    expect(page.locator("#batch-result")).to_contain_text(DISCLAIMER)
    for film in films:
        expect(page.locator("#batch-table")).to_contain_text(film.name)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(SCREENSHOT.with_name("hfxray_space_browser_batch.png")), full_page=True)


def test_no_request_leaves_the_machine(page_and_requests):
    _, requests = page_and_requests
    assert requests, "the network log recorded nothing"
    hosts = {urlparse(u).hostname for u in requests if not u.startswith(("data:", "blob:"))}
    assert hosts <= {"127.0.0.1", "localhost"}, sorted(hosts)
