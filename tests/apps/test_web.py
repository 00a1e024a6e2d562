"""Issue 17: the web page at `/`, in a real browser (Debian's chromium driven by Playwright).

The test types a prompt and sees the streamed reply (equal to the in-process greedy answer),
compares sentences, uploads a photo and sees its label, and saves a screenshot
(``NAC_SCREENSHOTS=folder`` keeps them; otherwise they go to the test's temporary folder).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import nac

pytest.importorskip("fastapi", reason="needs the serve extra (pip install 'nac[serve]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install 'nac[test]')")

from serving import KEY, running  # noqa: E402
from nac.apps.generate import generate_text  # noqa: E402
from nac.apps.serve import ServeConfig, chat_prompt, create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (make toolchain installs it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_the_page_chats_compares_and_classifies(browser, tiny_lm, minilm_nac, effnet_nac, tmp_path):
    from skimage import data as skdata

    from nac.apps.tasks import classify_images

    model = nac.load(tiny_lm)
    prompt = "the cat sat on the"
    want = generate_text(model, chat_prompt(model, [{"role": "user", "content": prompt}]), max_new_tokens=40)
    photo = Path(skdata.__file__).parent / "chelsea.png"
    label = classify_images(nac.load(effnet_nac[0]), [photo], 1)[0][0].label
    shots = Path(os.environ.get("NAC_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)

    with running(create_app([tiny_lm, minilm_nac[0], effnet_nac[0]], ServeConfig(api_key=KEY))) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 1300})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.fill("#api-key", KEY)
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector("#chat-panel:not([hidden])")
        page.fill("#chat-max", "40")
        page.fill("#chat-input", prompt)
        page.press("#chat-input", "Enter")
        reply = page.locator(".msg.assistant .text").last
        page.wait_for_function("document.getElementById('chat-send').disabled === false "
                               "&& document.querySelectorAll('.msg.assistant').length === 1", timeout=60_000)
        assert reply.inner_text() == want.strip() or reply.text_content() == want

        page.click("#sim-run")
        page.wait_for_selector("#sim-table td", timeout=60_000)
        cells = page.locator("#sim-table td").all_inner_texts()
        assert len(cells) == 16 and cells[0] == "1.000"

        page.set_input_files("#img-file", str(photo))
        page.wait_for_selector("#img-labels li", timeout=60_000)
        assert label in page.locator("#img-labels li").first.inner_text()
        assert page.locator("#error").is_hidden()
        page.screenshot(path=str(shots / "nac-web.png"), full_page=True)
        assert errors == []
    assert (shots / "nac-web.png").stat().st_size > 10_000
