"""The teaching page in a real browser: headless Debian chromium driven by selenium through the system's
chromedriver (never a downloaded browser), against a real `npbert serve` process on 127.0.0.1. The page
must show exactly what the pipeline and the model compute: the answers, the tokens, the start/end
probabilities, the attention of the layer and head picked; refusals appear as messages. A screenshot is
saved in the test's tmp dir and, when NPBERT_ARTIFACTS is set, copied there (with the page's timings)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="npbert serve needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="npbert serve needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("selenium", reason="the browser test needs selenium (the browser extra)")

CHROMIUM = Path(os.environ.get("NPBERT_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("NPBERT_CHROMEDRIVER", "/usr/bin/chromedriver"))
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(
        f"no browser: {CHROMIUM} or {CHROMEDRIVER} is missing (Debian: apt-get install chromium "
        "chromium-driver; .ci/run does it where it can)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver import ActionChains  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

import npbert  # noqa: E402
from npbert.serve.explain import explain  # noqa: E402
from serve_helpers import Server  # noqa: E402

SAMPLE = {"question": "What's my name?", "context": "My name is John and I live in Seattle"}
LONG = " ".join(f"In round {i} the home team played well and the visitors scored {i} points." for i in range(12))
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1000",
]


@pytest.fixture(scope="module")
def qa(tiny_checkpoint):
    return npbert.pipeline("question-answering", model=str(tiny_checkpoint))


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    s = Server(tiny_checkpoint, tmp_path_factory.mktemp("page") / "server.log", "--max-context-chars", "2000")
    yield s
    assert s.stop() == 0, s.output()


@pytest.fixture(scope="module")
def browser():
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never fetch a driver or a browser
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="npbert-chromium-")
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    except WebDriverException as e:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"chromium did not start: {e.msg}")
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(driver, condition, timeout: float = 60):
    return WebDriverWait(driver, timeout).until(condition)


def status(driver):
    s = driver.find_element(By.ID, "status")
    return s.get_attribute("class"), s.text


def ask(driver, question: str, context: str, **settings):
    """Fill the form (window settings through the DOM: they sit in a closed <details>), submit, and wait
    until the page has finished (a status other than busy)."""
    driver.execute_script(
        "document.getElementById('question').value = arguments[0];"
        "document.getElementById('context').value = arguments[1];"
        "document.getElementById('max-seq-len').value = arguments[2];"
        "document.getElementById('doc-stride').value = arguments[3];",
        question,
        context,
        str(settings.get("max_seq_len", "")),
        str(settings.get("doc_stride", "")),
    )
    driver.find_element(By.ID, "ask").click()
    return wait(driver, lambda d: status(d)[0] in ("ok", "error") and status(d))


def chips(driver, box: str):
    return driver.find_elements(By.CSS_SELECTOR, f"#{box} .tok")


def save_screenshot(driver, path: Path) -> Path:
    """The whole page, not just the window (Chrome DevTools' capture beyond the viewport)."""
    width, height = driver.execute_script("const e = document.documentElement; return [e.scrollWidth, e.scrollHeight];")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def publish(*paths: Path) -> None:
    if os.environ.get("NPBERT_ARTIFACTS"):
        out = Path(os.environ["NPBERT_ARTIFACTS"])
        out.mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copy(p, out / p.name)


def test_sample_answer_tokens_probabilities_and_attention(browser, server, qa, tmp_path):
    browser.get(f"http://127.0.0.1:{server.port}/")
    timing = browser.execute_script(
        "const t = performance.getEntriesByType('navigation')[0];"
        "return {dom_content_loaded_ms: t.domContentLoadedEventEnd, load_ms: t.loadEventEnd};"
    )
    assert browser.find_element(By.ID, "question").get_attribute("value") == SAMPLE["question"]
    assert browser.find_element(By.ID, "context").get_attribute("value") == SAMPLE["context"]
    wait(browser, lambda d: "Model:" in d.find_element(By.ID, "model-info").text)

    browser.find_element(By.ID, "ask").click()
    kind, text = wait(browser, lambda d: status(d)[0] in ("ok", "error") and status(d))
    assert kind == "ok", text
    want = qa(**SAMPLE, top_k=3)
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#answers .answer-text")]
    assert shown == [a["answer"] or "(no answer)" for a in want]
    assert shown[0] == qa(**SAMPLE)["answer"]
    assert browser.find_element(By.CSS_SELECTOR, "#context-view mark").text == want[0]["answer"]

    data = explain(qa, SAMPLE["question"], SAMPLE["context"], {"top_k": 3})
    tokens = data["windows"][0]["tokens"]
    assert [c.text for c in chips(browser, "tokens")] == tokens

    browser.find_element(By.ID, "toggle-probs").click()
    start = [float(e.get_attribute("data-p")) for e in browser.find_elements(By.CSS_SELECTOR, "#tokens .heat.start")]
    end = [float(e.get_attribute("data-p")) for e in browser.find_elements(By.CSS_SELECTOR, "#tokens .heat.end")]
    np.testing.assert_allclose(start, data["start_probs"], rtol=1e-6)
    np.testing.assert_allclose(end, data["end_probs"], rtol=1e-6)

    # Small multiples of every head of layer 0, then one head of another layer.
    n_heads = qa.model.config.n_heads
    assert len(browser.find_elements(By.CSS_SELECTOR, "#attn-matrices figure")) == n_heads
    Select(browser.find_element(By.ID, "layer")).select_by_value("1")
    Select(browser.find_element(By.ID, "head")).select_by_value("2")
    view = browser.find_element(By.ID, "attention-view")
    assert (view.get_attribute("data-layer"), view.get_attribute("data-head")) == ("1", "2")
    (caption,) = browser.find_elements(By.CSS_SELECTOR, "#attn-matrices figcaption")
    assert caption.text == "layer 1, head 2"

    # Hovering a token colours every token by where it attends: the model's own numbers.
    ids = np.array(data["windows"][0]["input_ids"])
    probs = qa.model(ids[None], output_attentions=True).attentions[1][0, 2]
    i = tokens.index("John") if "John" in tokens else len(tokens) // 2
    ActionChains(browser).move_to_element(chips(browser, "attn-tokens")[i]).perform()
    weights = [float(c.get_attribute("data-weight")) for c in chips(browser, "attn-tokens")]
    np.testing.assert_allclose(weights, probs[i], rtol=1e-6)
    assert f"“{tokens[i]}” (token {i}) attends, in layer 1, head 2" in browser.find_element(By.ID, "attn-readout").text

    shot = save_screenshot(browser, tmp_path / "npbert-page.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    (tmp_path / "npbert-page-timing.json").write_text(json.dumps(timing, indent=2))
    publish(shot, tmp_path / "npbert-page-timing.json")


def test_long_context_windows(browser, server, qa):
    browser.get(f"http://127.0.0.1:{server.port}/")
    kind, text = ask(browser, "Who scored 7 points?", LONG, max_seq_len=48, doc_stride=16)
    assert kind == "ok", text
    data = explain(qa, "Who scored 7 points?", LONG, {"top_k": 3, "max_seq_len": 48, "doc_stride": 16})
    n, k = len(data["windows"]), data["window"]
    assert n > 3
    assert len(browser.find_elements(By.CSS_SELECTOR, "#window-ruler .span")) == n
    assert f"window {k + 1} of {n}" in browser.find_element(By.ID, "window-picker").text
    assert [c.text for c in chips(browser, "tokens")] == data["windows"][k]["tokens"]
    # Overlapping windows: the tokens shared with a neighbour are marked.
    assert browser.find_elements(By.CSS_SELECTOR, "#tokens .tok.overlap")

    other = 0 if k else 1
    browser.find_elements(By.CSS_SELECTOR, "#window-ruler .span")[other].click()
    wait(browser, lambda d: f"window {other + 1} of {n}" in d.find_element(By.ID, "window-picker").text)
    assert [c.text for c in chips(browser, "tokens")] == data["windows"][other]["tokens"]
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#answers .answer-text")] == [
        a["answer"] for a in data["answers"]
    ]


@pytest.mark.parametrize(
    "question, context, settings, message",
    [
        (
            "Who?",
            "x" * 2001,
            {},
            "The server refused this input (HTTP 422): input_data.context: has 2001 characters, "
            "over the server's limit of 2000",
        ),
        ("Who?", "   ", {}, "input_data.context: must not be empty or blank"),
        ("why " * 40, "My name is John", {"max_seq_len": 16}, "no room is left for the context"),
    ],
)
def test_refusals_are_shown(browser, server, question, context, settings, message):
    browser.get(f"http://127.0.0.1:{server.port}/")
    kind, text = ask(browser, question, context, **settings)
    assert kind == "error" and message in text
    assert not browser.find_element(By.ID, "results").is_displayed()
    kind, text = ask(browser, **SAMPLE)  # and the page still works
    assert kind == "ok" and browser.find_element(By.ID, "results").is_displayed()


def test_a_stopped_server_is_reported(browser, tiny_checkpoint, tmp_path):
    s = Server(tiny_checkpoint, tmp_path / "server.log")
    try:
        browser.get(f"http://127.0.0.1:{s.port}/")
        wait(browser, lambda d: "Model:" in d.find_element(By.ID, "model-info").text)
    finally:
        assert s.stop() == 0, s.output()
    kind, text = ask(browser, **SAMPLE)
    assert kind == "error" and text.startswith("Could not reach the server") and "npbert serve" in text
