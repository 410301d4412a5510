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


def test_after_a_broken_upload_the_next_message_gets_an_answer(browser, chat_model, tmp_path):
    """Issue 22: a truncated upload is a warning naming the file (no error state, the bad file dropped, the text kept),
    the next question is answered, text is shown as written, and a server with adapters opens on the first one."""
    import io

    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="JPEG")
    cut = tmp_path / "holiday.jpg"
    cut.write_bytes(buffer.getvalue()[:150])  # cut inside its header
    with live_server(build_app(chat_model, ServeConfig()), free_port()) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#message textarea"))
        assert browser.find_element(By.CSS_SELECTOR, "#model input").get_attribute("value") == "one"
        assert "answering with its LoRA adapter one" in browser.find_element(By.ID, "intro").text.replace("\n", " ")

        def toasts() -> str:
            return " ".join(t.text for t in browser.find_elements(By.CSS_SELECTOR, "[data-testid='toast-body']"))

        browser.find_element(By.CSS_SELECTOR, "#message input[type=file]").send_keys(str(cut))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#message [data-testid='file-preview'], #message img"))
        box.send_keys("What is in <b>my</b> photo?")
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: "holiday.jpg: truncated or corrupt header" in toasts())
        assert "attach a complete PNG, JPEG, GIF or WebP file" in toasts() and "/tmp" not in toasts()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#message img"))  # the bad file is gone
        assert box.get_attribute("value") == "What is in <b>my</b> photo?"  # the text is kept
        assert not browser.find_elements(By.CSS_SELECTOR, ".error")  # no component is left in an error state

        box.send_keys(Keys.ENTER)  # the same text again, now without the file: answered
        users = lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, '#chatbot [data-testid="user"]')]  # noqa: E731
        wait.until(lambda d: users(d) == ["What is in <b>my</b> photo?"])  # shown as written, not as HTML
        bots = lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, '#chatbot [data-testid="bot"]')]  # noqa: E731
        seen: list[list[str]] = []
        while len(seen) < 6 or not seen[-1] or seen[-1] != seen[-6]:  # answered, and done streaming
            seen.append(bots(browser))
            assert len(seen) < 400, "no answer within 60 s"
            time.sleep(0.15)

        box.send_keys("where does <image> go?")  # a literal placeholder: refused, shown as written in the toast
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: "a literal '<image>'" in toasts())
