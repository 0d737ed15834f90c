"""A two-run comparison report opened in headless Debian chromium (through selenium).

Checks what only a browser can: no console errors, every audio player loads with the right
duration, every image decodes, and the config diff shows exactly the one differing key.
Saves a full-page screenshot to artifacts/report.png.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for report_fixtures

from report_fixtures import make_run  # noqa: E402

from soundry.eval.report import write_report  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CLIPS = {"clip00": 1.0, "clip01": 0.5}
LISTEN_STEPS = 2


def _driver(user_data_dir: str):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(
            "Debian chromium / chromium-driver are not installed "
            "(apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1280,900",
        f"--user-data-dir={user_data_dir}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


WAIT_FOR_MEDIA = """
const done = arguments[arguments.length - 1];
const audios = Array.from(document.querySelectorAll('audio'));
const images = Array.from(document.querySelectorAll('img'));
const ready = (a) => a.readyState >= 1 || a.error;
const imgReady = (i) => i.complete;
const finish = () => done({
  audios: audios.map(a => ({label: a.getAttribute('aria-label'), duration: a.duration,
                            expected: parseFloat(a.dataset.duration),
                            error: a.error ? a.error.code : null})),
  images: images.map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight,
                            complete: i.complete})),
});
const start = Date.now();
(function poll() {
  if ((audios.every(ready) && images.every(imgReady)) || Date.now() - start > 20000) {
    finish();
  } else {
    setTimeout(poll, 50);
  }
})();
"""


@pytest.mark.parametrize("media", ["embed", "folder"])
def test_two_run_report_in_chromium(tmp_path: Path, media: str) -> None:
    a = make_run(tmp_path / "adamw", clips=CLIPS)
    b = make_run(
        tmp_path / "muon",
        clips=CLIPS,
        quality=2.0,
        seed=1,
        config_changes={"optim.generator.type": "muon"},
    )
    result = write_report([a, b], tmp_path / "report.html", listen_steps=LISTEN_STEPS, media=media)
    assert result.media_mode == media
    # Per shown step and clip: one shared reference + one output per run.
    expected_players = LISTEN_STEPS * len(CLIPS) * (1 + 2)

    driver = _driver(tempfile.mkdtemp(prefix="soundry-chromium-"))
    try:
        driver.set_script_timeout(30)
        driver.get(result.path.as_uri())
        state = driver.execute_async_script(WAIT_FOR_MEDIA)

        audios = state["audios"]
        assert len(audios) == expected_players == result.players
        for audio in audios:
            assert audio["error"] is None, audio
            clip = next(c for c in CLIPS if c in audio["label"])
            assert audio["duration"] == pytest.approx(CLIPS[clip], abs=1e-3), audio
            assert audio["expected"] == pytest.approx(CLIPS[clip], abs=1e-6)

        images = state["images"]
        assert len(images) == result.images > 0
        for image in images:
            assert image["complete"] and image["w"] > 0 and image["h"] > 0, image

        rows = driver.find_elements("css selector", "table.config-diff tbody tr")
        assert len(rows) == 1
        cells = [c.text.strip() for c in rows[0].find_elements("css selector", "th, td")]
        assert cells == ["optim.generator.type", "adamw", "muon"]

        # Hovering a chart shows the tooltip (the page script runs without errors).
        chart = driver.find_element("css selector", "figure.chart-box svg.chart")
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(driver).move_to_element(chart).perform()
        tip = driver.find_element("css selector", "figure.chart-box .tooltip")
        assert tip.is_displayed() and "step" in tip.text

        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []

        if media == "embed":
            ARTIFACTS.mkdir(exist_ok=True)
            _full_page_screenshot(driver, ARTIFACTS / "report.png")
            assert (ARTIFACTS / "report.png").stat().st_size > 10_000
    finally:
        driver.quit()


def _full_page_screenshot(driver, path: Path) -> None:
    import base64

    width = driver.execute_script("return document.documentElement.scrollWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": min(height, 16000), "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def test_chromium_binaries_are_debian_ones() -> None:
    """The test above drives the system chromium, never a downloaded browser build."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    assert Path(shutil.which("chromium")).resolve().is_relative_to("/usr")
