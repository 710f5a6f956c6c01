"""The search page in headless Chromium (Selenium): type a query, see ranked cards with moment bars, play a moment.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``); skipped with
the reason when they are missing. ``PRVR_SCREENSHOT=path.png`` saves a screenshot of the results. By default the page
serves the synthetic test index (with one real WebM file for the player); ``PRVR_SCREENSHOT_INDEX=<index dir>``
serves a real index instead (e.g. the demo's) and ``PRVR_SCREENSHOT_QUERY`` sets the query typed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update

from helpers import load_with_localizer, serve_in_thread
from prvr.index.layout import DB_NAME
from prvr.retriever import Retriever
from prvr.services.app import ServiceSettings, create_app
from prvr.index.catalog import Video, open_database

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,1000", "--hide-scrollbars", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
)  # fmt: skip
WAIT_S = 60


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    return browser, driver


def _write_webm(path: Path, seconds: int, fps: int = 5) -> None:
    """A small real VP9 video (a moving bar) so that the page shows a player."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for index in range(seconds * fps):
            image = np.full((180, 320, 3), 40, dtype=np.uint8)  # (H, W, 3)
            x = int(index / (seconds * fps) * 300)
            image[60:120, x : x + 20] = (240, 138, 36)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def served(service_index, tmp_path_factory):
    """Base URL of a live server, and the query to type."""
    real_index = os.environ.get("PRVR_SCREENSHOT_INDEX")
    if real_index:
        app = create_app(ServiceSettings(index_dir=Path(real_index), poll_interval_s=0), loader=Retriever.load)
        query = os.environ.get("PRVR_SCREENSHOT_QUERY", "a man throws a ball to his dog")
        expect_media = False
    else:
        index_dir = tmp_path_factory.mktemp("browser") / "index"
        shutil.copytree(service_index["dir"], index_dir)
        video = index_dir.parent / "moving_bar.webm"
        with open_database(index_dir / DB_NAME) as db:
            record = db.get_video(service_index["with_media"])
            assert record is not None and record.duration_s
            _write_webm(video, seconds=int(np.ceil(record.duration_s)))
            with db.session() as session:  # the copied database points at the fixture's fake file: use the WebM
                session.execute(update(Video).where(Video.id == record.id).values(uri=str(video)))
        app = create_app(ServiceSettings(index_dir=index_dir, poll_interval_s=0), loader=load_with_localizer)
        query = "a dog kicks a ball"
        expect_media = True
    with serve_in_thread(app) as base:
        yield {"base": base, "query": query, "expect_media": expect_media, "media_video": service_index["with_media"]}


@pytest.fixture(scope="module")
def driver():
    browser, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="prvr-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield session
    finally:
        session.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_search_page_shows_results_with_moment_bars(driver, served) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, WAIT_S)
    driver.get(served["base"] + "/")
    wait.until(lambda d: "videos" in d.find_element(By.ID, "index-info").text)
    box = driver.find_element(By.ID, "query")
    box.send_keys(served["query"])
    box.send_keys(Keys.ENTER)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results .card")))
    cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
    assert 1 <= len(cards) <= 10
    assert [card.find_element(By.CLASS_NAME, "rank").text for card in cards] == [str(i + 1) for i in range(len(cards))]
    status = driver.find_element(By.ID, "status").text
    assert served["query"] in status and "ms" in status, status
    bars = driver.find_elements(By.CSS_SELECTOR, "#results .card .timeline svg rect.moment")
    curves = driver.find_elements(By.CSS_SELECTOR, "#results .card .timeline svg path.curve-line")
    assert bars, "no moment bars drawn"
    assert len(curves) == len(cards), "every card draws its relevance curve"
    for bar in bars[:5]:
        assert float(bar.get_attribute("width")) > 0
    assert "q=" in driver.current_url  # the search is linkable

    if served["expect_media"]:
        card = driver.find_element(By.CSS_SELECTOR, f'#results .card[data-video-id="{served["media_video"]}"]')
        video = card.find_element(By.TAG_NAME, "video")
        wait.until(lambda d: d.execute_script("return arguments[0].readyState", video) >= 1)  # metadata loaded
        chip = card.find_elements(By.CSS_SELECTOR, ".moments .chip")[-1]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", chip)
        chip.click()
        start = float(card.find_element(By.CSS_SELECTOR, ".timeline svg rect.moment").get_attribute("x"))
        wait.until(lambda d: d.execute_script("return arguments[0].currentTime", video) > 0 or start == 0)
        driver.execute_script("window.scrollTo(0, 0)")

    shot = os.environ.get("PRVR_SCREENSHOT")
    if shot:
        height = driver.execute_script("return Math.min(document.body.scrollHeight, 1400)")
        driver.set_window_size(1280, max(900, int(height)))
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(shot)


def test_search_page_shows_errors(driver, served) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(served["base"] + "/?q=" + "x" * 600)
    WebDriverWait(driver, WAIT_S).until(lambda d: "at most" in d.find_element(By.ID, "status").text)
    assert "error" in driver.find_element(By.ID, "status").get_attribute("class")
