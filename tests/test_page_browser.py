"""The teaching page in a real browser: headless Debian chromium driven by selenium through the system's
chromedriver (never a downloaded browser), against a real `npbert serve` process on 127.0.0.1. The page
must show exactly what the pipeline and the model compute: the answers, the tokens, the start/end
probabilities, the attention of the layer and head picked, the attributions of the chosen answer
(npbert.attributions, through POST /v1/attributions) as token colours; refusals appear as messages. Screenshots
are saved in the tests' tmp dirs and, when NPBERT_ARTIFACTS is set, copied there (with the page's timings)."""

from __future__ import annotations

import base64
import json
import os
import re
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
from checkpoints import context_of_windows  # noqa: E402
from npbert.attributions import explain as attributions  # noqa: E402
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
    """The whole page, not just the window (Chrome DevTools' capture beyond the viewport). From the top: a
    page scrolled down (by clicks on controls low in it) comes out with its lower sections blank."""
    driver.execute_script("window.scrollTo(0, 0)")
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


# --- the attributions panel (section 5) -------------------------------------------------------------------

# Counts the page's POST /v1/attributions requests and, while `hold` is set, keeps them from the server (until
# release()), so that the busy state can be seen however fast the tiny model answers.
WATCH_ATTRIBUTIONS = """
window.attributionCalls = {count: 0, settled: 0, hold: false, release: null};
const fetchBefore = window.fetch;
window.fetch = async (url, options) => {
  if (String(url).startsWith("/v1/attributions")) {
    window.attributionCalls.count++;
    if (window.attributionCalls.hold) await new Promise((go) => { window.attributionCalls.release = go; });
  }
  try {
    return await fetchBefore(url, options);
  } finally {
    // counted after the page's own handler of this answer has run
    if (String(url).startsWith("/v1/attributions")) setTimeout(() => window.attributionCalls.settled++, 0);
  }
};
"""


def attribution_calls(driver) -> int:
    return driver.execute_script("return window.attributionCalls.count")


def attributed(driver):
    """Wait until the panel has finished (a status other than busy): (class, text)."""

    def done(d):
        s = d.find_element(By.ID, "attr-status")
        return s.get_attribute("class") in ("ok", "error") and (s.get_attribute("class"), s.text)

    return wait(driver, done)


def rgb(chip) -> tuple[int, int, int]:
    r, g, b = re.match(r"rgba?\((\d+), (\d+), (\d+)", chip.value_of_css_property("background-color")).groups()
    return int(r), int(g), int(b)


def legend_ends(driver) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The colours at the negative and the positive end of the panel's legend."""
    image = driver.find_element(By.CSS_SELECTOR, "#attr-view .diverging").value_of_css_property("background-image")
    stops = [tuple(int(v) for v in m) for m in re.findall(r"rgb\((\d+), (\d+), (\d+)\)", image)]
    return stops[0], stops[-1]


def assert_colours_follow(driver, want: list[float], sequence_ids: list) -> None:
    """The chips' colours follow the numbers: question and context tokens white at 0, green for positive,
    purple for negative, darker the larger |score| (within a hue), the largest |score| in the legend's end
    colour; special tokens one grey whatever their score."""
    chips_ = chips(driver, "attr-tokens")
    text = [i for i, s in enumerate(sequence_ids) if s is not None]
    special = [i for i, s in enumerate(sequence_ids) if s is None]
    colours = [rgb(c) for c in chips_]
    largest = max(abs(want[i]) for i in text)
    negative_end, positive_end = legend_ends(driver)
    assert positive_end[1] > max(positive_end[0], positive_end[2])  # green
    assert negative_end[1] < min(negative_end[0], negative_end[2])  # purple
    for i in text:
        r, g, b = colours[i]
        t = want[i] / largest
        if t > 0.05:
            assert g > max(r, b), (i, t, colours[i])
        elif t < -0.05:
            assert g < min(r, b), (i, t, colours[i])
        elif abs(t) < 0.002:
            assert colours[i] == (255, 255, 255), (i, t, colours[i])
    top = max(text, key=lambda i: abs(want[i]))
    assert colours[top] == (positive_end if want[top] > 0 else negative_end)
    depth = {i: 255 - min(colours[i]) for i in text}  # how far from white
    for i in text:
        for j in text:
            if want[i] * want[j] > 0 and abs(want[i]) > abs(want[j]) + 0.01 * largest:
                assert depth[i] >= depth[j], (i, j, want[i], want[j], colours[i], colours[j])
    assert len({colours[i] for i in special}) == 1 and max(colours[special[0]]) - min(colours[special[0]]) < 10


def shown_values(driver) -> list[float]:
    return [float(c.get_attribute("data-value")) for c in chips(driver, "attr-tokens")]


def test_attributions_colour_the_tokens(browser, server, qa, tmp_path):
    browser.get(f"http://127.0.0.1:{server.port}/")
    browser.execute_script(WATCH_ATTRIBUTIONS)
    kind, text = ask(browser, **SAMPLE)
    assert kind == "ok", text
    assert not browser.find_element(By.ID, "attr-view").is_displayed()  # nothing is computed unasked
    answers = qa(**SAMPLE, top_k=3)
    best = attributions(qa, **SAMPLE, method="ig", span=(answers[0]["start"], answers[0]["end"]))

    # Busy while the request runs: the button is disabled until the answer is in.
    browser.execute_script("window.attributionCalls.hold = true")
    browser.find_element(By.ID, "attr-run").click()
    status_ = browser.find_element(By.ID, "attr-status")
    assert status_.get_attribute("class") == "busy" and "Computing integrated gradients" in status_.text
    assert not browser.find_element(By.ID, "attr-run").is_enabled()
    wait(browser, lambda d: d.execute_script("return window.attributionCalls.release !== null"))
    browser.execute_script("window.attributionCalls.hold = false; window.attributionCalls.release()")
    kind, text = attributed(browser)
    assert kind == "ok", text
    assert browser.find_element(By.ID, "attr-run").is_enabled() and attribution_calls(browser) == 1

    # Integrated gradients, to the start: the route's numbers (npbert.attributions), coloured, the delta shown.
    assert [c.text for c in chips(browser, "attr-tokens")] == best["tokens"]
    np.testing.assert_allclose(shown_values(browser), best["start"], rtol=1e-5, atol=1e-7)
    assert_colours_follow(browser, best["start"], best["sequence_ids"])
    (target,) = browser.find_elements(By.CSS_SELECTOR, "#attr-tokens .tok.target")
    assert int(target.get_attribute("data-index")) == best["target"]["start"]
    assert f"Explaining “{answers[0]['answer']}”: its start token" in browser.find_element(By.ID, "attr-target").text
    delta = browser.find_element(By.ID, "attr-delta")
    assert delta.is_displayed() and delta.text.startswith("Convergence delta: start ")
    for side in ("start", "end"):
        assert abs(float(delta.get_attribute(f"data-{side}")) - best[f"delta_{side}"]) < 1e-5
    i = best["target"]["start"]
    assert f"attribution to the start {best['start'][i]:+.4f}".replace("-", "−") in target.get_attribute("title")

    # Another method: a new request. One asked for while another runs replaces it (the older one is aborted
    # and its late answer dropped). Grad x Input has no delta. The end side: no request, other numbers.
    browser.execute_script("window.attributionCalls.hold = true; window.attributionCalls.release = null")
    Select(browser.find_element(By.ID, "attr-method")).select_by_value("smoothgrad")
    wait(browser, lambda d: d.execute_script("return window.attributionCalls.release !== null"))
    assert "Computing SmoothGrad" in browser.find_element(By.ID, "attr-status").text
    browser.execute_script("window.attributionCalls.hold = false")
    Select(browser.find_element(By.ID, "attr-method")).select_by_value("grad-x-input")
    kind, text = attributed(browser)
    assert kind == "ok" and text.startswith("Grad × Input") and attribution_calls(browser) == 3
    browser.execute_script("window.attributionCalls.release()")  # the SmoothGrad request, aborted
    wait(browser, lambda d: d.execute_script("return window.attributionCalls.settled") == 3)
    assert browser.find_element(By.ID, "attr-view").get_attribute("data-method") == "grad-x-input"
    assert attributed(browser) == (kind, text)
    gxi = attributions(qa, **SAMPLE, method="grad-x-input", span=(answers[0]["start"], answers[0]["end"]))
    np.testing.assert_allclose(shown_values(browser), gxi["start"], rtol=1e-5, atol=1e-7)
    assert not browser.find_element(By.ID, "attr-delta").is_displayed()
    browser.find_element(By.ID, "attr-end").click()
    assert browser.find_element(By.ID, "attr-view").get_attribute("data-side") == "end"
    np.testing.assert_allclose(shown_values(browser), gxi["end"], rtol=1e-5, atol=1e-7)
    assert_colours_follow(browser, gxi["end"], gxi["sequence_ids"])
    (target,) = browser.find_elements(By.CSS_SELECTOR, "#attr-tokens .tok.target")
    assert int(target.get_attribute("data-index")) == gxi["target"]["end"]
    assert attribution_calls(browser) == 3
    shot = save_screenshot(browser, tmp_path / "npbert-page-attributions.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    publish(shot)

    # Another answer chosen: it is the one explained.
    browser.find_elements(By.CSS_SELECTOR, "#answers li")[1].click()
    kind, text = attributed(browser)
    assert kind == "ok" and attribution_calls(browser) == 4
    other = attributions(qa, **SAMPLE, method="grad-x-input", span=(answers[1]["start"], answers[1]["end"]))
    assert f"Explaining “{answers[1]['answer']}”: its end token" in browser.find_element(By.ID, "attr-target").text
    np.testing.assert_allclose(shown_values(browser), other["end"], rtol=1e-5, atol=1e-7)

    # Attention rollout: every score >= 0, so only green.
    Select(browser.find_element(By.ID, "attr-method")).select_by_value("rollout")
    kind, text = attributed(browser)
    assert kind == "ok" and attribution_calls(browser) == 5
    roll = attributions(qa, **SAMPLE, method="rollout", span=(answers[1]["start"], answers[1]["end"]))
    np.testing.assert_allclose(shown_values(browser), roll["end"], rtol=1e-5, atol=1e-7)
    assert_colours_follow(browser, roll["end"], roll["sequence_ids"])

    # SmoothGrad: seeded, so the page shows the very numbers of the same call here.
    Select(browser.find_element(By.ID, "attr-method")).select_by_value("smoothgrad")
    kind, text = attributed(browser)
    assert kind == "ok" and text.startswith("SmoothGrad") and attribution_calls(browser) == 6
    smooth = attributions(qa, **SAMPLE, method="smoothgrad", span=(answers[1]["start"], answers[1]["end"]))
    np.testing.assert_allclose(shown_values(browser), smooth["end"], rtol=1e-5, atol=1e-7)
    assert_colours_follow(browser, smooth["end"], smooth["sequence_ids"])


def test_attributions_of_windows_and_refusals(browser, server, qa):
    browser.get(f"http://127.0.0.1:{server.port}/")
    browser.execute_script(WATCH_ATTRIBUTIONS)
    question, settings = "Who scored 2 points?", {"max_seq_len": 48, "doc_stride": 16}
    context = context_of_windows(qa.tokenizer, question, 2, settings, LONG)  # 2 windows of 48 tokens
    kind, text = ask(browser, question, context, **settings)
    assert kind == "ok", text
    browser.find_element(By.ID, "attr-run").click()
    kind, text = attributed(browser)
    assert kind == "ok", text
    page_data = explain(qa, question, context, {"top_k": 3, **settings})
    a = page_data["answers"][0]
    want = attributions(qa, question, context, "ig", span=(a["start"], a["end"]), params=settings)
    assert len(want["windows"]) == len(page_data["windows"]) == 2
    k = page_data["window"]
    np.testing.assert_allclose(shown_values(browser), want["windows"][k]["start"], rtol=1e-5, atol=1e-7)

    # The other window: drawn from the same response (no request), its own target when it lacks the answer.
    other = 1 - k
    browser.find_elements(By.CSS_SELECTOR, "#window-ruler .span")[other].click()
    wait(browser, lambda d: f"window {other + 1} of 2" in d.find_element(By.ID, "window-picker").text)
    w = want["windows"][other]
    assert [c.text for c in chips(browser, "attr-tokens")] == w["tokens"]
    np.testing.assert_allclose(shown_values(browser), w["start"], rtol=1e-5, atol=1e-7)
    said = browser.find_element(By.ID, "attr-target").text
    assert ("does not hold" in said) == (not w["target"]["holds_answer"])
    assert attribution_calls(browser) == 1

    # A context of more windows than the server attributes: its refusal, shown as the page shows others.
    kind, text = ask(browser, question, LONG, **settings)
    assert kind == "ok", text  # answered: the explanation allows many more windows
    kind, text = attributed(browser)  # attributions follow the new question: refused
    assert kind == "error" and text.startswith("The server refused this input (HTTP 422): input_data.context:")
    assert not browser.find_element(By.ID, "attr-view").is_displayed()
