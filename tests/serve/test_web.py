"""The browser demo in headless Chromium: upload an image, ask, watch the answer stream in.

Needs Debian's ``chromium`` and ``chromium-driver``; the set-up installs them with apt-get (as root, or with
passwordless sudo) and skips with the reason where that is impossible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from mmgpt.serve.app import ServeConfig, build_app
from tests.serve.conftest import EndlessChatModel, free_port, live_server

pytestmark = pytest.mark.slow
PACKAGES = ["chromium", "chromium-driver"]


def ensure_chromium() -> tuple[str, str]:
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("headless Chromium is not installed and apt-get is unavailable: install chromium + chromedriver")
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(prefix + command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"cannot install {PACKAGES} with {' '.join(prefix + command)}: {done.stderr.strip()[-300:]}")
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        pytest.skip(f"apt-get installed {PACKAGES} but chromium/chromedriver are not on PATH")
    return found


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = ensure_chromium()
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1400")
    options.binary_location = chromium
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


def test_upload_an_image_ask_and_see_a_streamed_answer(browser, chat_model, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from mmgpt.tiny_random import demo_image

    image = tmp_path / "shapes.png"
    demo_image(120).save(image)
    # Slowed and never ending early, so the stream is long enough to be watched growing.
    slow = EndlessChatModel(chat_model.model, chat_model.tokenizer, chat_model.transform, name="tiny")
    with live_server(build_app(slow, ServeConfig()), free_port()) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#message textarea"))
        browser.find_element(By.CSS_SELECTOR, "#message input[type=file]").send_keys(str(image))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#message img"))  # the upload preview
        box.send_keys("What do you see in this image?")
        box.send_keys(Keys.ENTER)

        def answer() -> str:
            bots = browser.find_elements(By.CSS_SELECTOR, '#chatbot [data-testid="bot"]')
            return bots[-1].text if bots else ""

        seen: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            text = answer()
            if text and (not seen or text != seen[-1]):
                seen.append(text)
            if len(seen) >= 3:
                break
            time.sleep(0.05)
        assert len(seen) >= 3, f"the answer did not stream in (saw {seen!r})"
        assert browser.find_elements(By.CSS_SELECTOR, '#chatbot [data-testid="user"] img')  # the image is shown
