"""The notebooks of docs/notebooks/, executed top to bottom with nbclient on this interpreter's ipykernel
(a kernelspec written to a temporary JUPYTER_PATH, so a fresh venv needs nothing installed beyond the test
extra), on the tiny test checkpoint (NPBERT_MODEL) and a few dozen made-up SQuAD questions (NPBERT_SQUAD,
NPBERT_SQUAD_V1); any cell's error fails the test. And they are stored without outputs."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need nbformat (the test extra)")
nbclient = pytest.importorskip("nbclient", reason="the notebook tests need nbclient (the test extra)")
pytest.importorskip("ipykernel", reason="the notebook tests need ipykernel (the test extra)")

from test_evaluate import make_squad  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "docs" / "notebooks"
EVALUATE, SDK, ENDPOINT = (
    "evaluate-model-question-answering.ipynb",
    "sdk-example.ipynb",
    "question-answering-online-endpoint.ipynb",
)
KERNEL = "npbert-tests"


def read(name: str):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def test_the_three_notebooks_are_stored_without_outputs():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted([EVALUATE, SDK, ENDPOINT])
    for name in (EVALUATE, SDK, ENDPOINT):
        nb = read(name)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs kept in git"


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory) -> Path:
    """A kernelspec that runs this interpreter's ipykernel (its PYTHONPATH and environment included)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "npbert tests",
                "language": "python",
            }
        )
    )
    return root


def execute(
    name: str, folder: Path, jupyter_path: Path, monkeypatch, env: dict, before: dict | None = None
) -> list[str]:
    """Run the notebook in `folder`; returns each code cell's outputs as text (images as 'image/png').
    `before`: {cell index: code} run in the same kernel just before that cell (not part of the notebook);
    a cell's error raises nbclient's CellExecutionError, as in "Run All"."""
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    nb = read(name)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name=KERNEL, resources={"metadata": {"path": str(folder)}})
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if index in (before or {}):
                client.execute_cell(nbformat.v4.new_code_cell(before[index]), index, store_history=False)
            client.execute_cell(cell, index)
    texts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        parts = []
        for out in cell.outputs:
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                parts.append(
                    "image/png"
                    if "image/png" in out.data
                    else out.data.get("text/markdown", out.data.get("text/plain", ""))
                )
        texts.append("\n".join(parts))
    return texts


def test_evaluate_notebook(tiny_checkpoint, tmp_path, jupyter_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="the notebook plots with matplotlib (the viz extra)")
    v2, v1 = tmp_path / "v2.json", tmp_path / "v1.json"
    v2.write_text(json.dumps(make_squad(30, "2.0", seed=1)), encoding="utf-8")
    v1.write_text(json.dumps(make_squad(30, "1.1", seed=2)), encoding="utf-8")
    out = execute(
        EVALUATE,
        tmp_path,
        jupyter_path,
        monkeypatch,
        {
            "NPBERT_MODEL": tiny_checkpoint,
            "NPBERT_SQUAD": v2,
            "NPBERT_SQUAD_V1": v1,
            "NPBERT_LIMIT": 24,
            "NPBERT_OUT": tmp_path / "eval",
        },
    )
    text = "\n".join(out)
    assert "| HasAns |" in text and "| NoAns |" in text and "best F1" in text
    assert "| question | gold | prediction | F1 | no-answer prob. |" in text and "image/png" in text
    assert "SQuAD v1.1: EM" in text and "over 24 questions" in text
    metrics = json.loads((tmp_path / "eval" / "v2" / "metrics.json").read_text())
    assert metrics["total"] == 24 and f"{metrics['best_f1']:.2f}" in text


# Run in the kernel before the v2.0 evaluation cell: the pipeline, wrapped so that its 5th call (the warm-up
# and the timing sample of the notebook's `answer`, then chunks 1 and 2 of 32 questions) first sends the
# kernel SIGINT, as Jupyter's interrupt button does; evaluate.run's handler stops the run there.
INTERRUPT_AFTER_TWO_CHUNKS = """
import signal as _signal
_pipeline, _calls = qa, []

class _Interrupting:
    def __getattr__(self, name):
        return getattr(_pipeline, name)

    def __call__(self, *args, **kwargs):
        _calls.append(1)
        if len(_calls) == 5:
            os.kill(os.getpid(), _signal.SIGINT)
        return _pipeline(*args, **kwargs)

qa = _Interrupting()
"""
V2_CELL = 5
V2_FILES = ("predictions.json", "na_probs.json", "metrics.json")


def v2_results(out: Path) -> dict:
    files = {name: json.loads((out / "v2" / name).read_text(encoding="utf-8")) for name in V2_FILES}
    for timing in ("elapsed_seconds", "questions_per_second"):
        files["metrics.json"].pop(timing)
    return files


def test_evaluate_notebook_reruns_after_an_interrupt_as_an_uninterrupted_run(
    tiny_checkpoint, tmp_path, jupyter_path, monkeypatch
):
    """Re-running the cells after an interrupt used to stop at "an unfinished run is here; pass --resume" (a
    notebook has no flag): now the rerun resumes, a run after a complete one starts over, and both end with
    the uninterrupted run's results. Also: the notebook says how many questions before answering them."""
    pytest.importorskip("matplotlib", reason="the notebook plots with matplotlib (the viz extra)")
    v2, v1 = tmp_path / "v2.json", tmp_path / "v1.json"
    v2.write_text(json.dumps(make_squad(100, "2.0", seed=3)), encoding="utf-8")
    v1.write_text(json.dumps(make_squad(20, "1.1", seed=4)), encoding="utf-8")
    env = {"NPBERT_MODEL": tiny_checkpoint, "NPBERT_SQUAD": v2, "NPBERT_SQUAD_V1": v1, "NPBERT_LIMIT": ""}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    out = execute(EVALUATE, tmp_path / "a", jupyter_path, monkeypatch, {**env, "NPBERT_OUT": tmp_path / "a" / "eval"})
    assert "v2.json: 100 questions, all of them (NPBERT_LIMIT=N answers the first N); about " in out[V2_CELL // 2]
    expected = v2_results(tmp_path / "a" / "eval")
    assert expected["metrics.json"]["total"] == 100

    b = {**env, "NPBERT_OUT": tmp_path / "b" / "eval"}
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="Interrupted"):
        execute(EVALUATE, tmp_path / "b", jupyter_path, monkeypatch, b, before={V2_CELL: INTERRUPT_AFTER_TWO_CHUNKS})
    partial = tmp_path / "b" / "eval" / "v2" / "predictions.partial.jsonl"
    assert len(partial.read_text(encoding="utf-8").splitlines()) == 3  # the header and two chunks
    out = execute(EVALUATE, tmp_path / "b", jupyter_path, monkeypatch, b)  # "Run All" again, same folder
    assert f"an interrupted run is in {tmp_path / 'b' / 'eval' / 'v2'}: resuming it" in out[V2_CELL // 2]
    assert not partial.exists() and v2_results(tmp_path / "b" / "eval") == expected
    out = execute(EVALUATE, tmp_path / "b", jupyter_path, monkeypatch, b)  # and again, after a complete run
    assert "resuming" not in out[V2_CELL // 2] and v2_results(tmp_path / "b" / "eval") == expected


def test_evaluate_notebook_without_network_stops_in_one_line(tmp_path, jupyter_path, monkeypatch):
    """The default data (the official dev files) cannot be downloaded: one line saying what to set, not a
    URLError traceback. No network is simulated by a proxy that refuses every connection."""
    monkeypatch.delenv("NPBERT_SQUAD", raising=False)
    env = {
        "NPBERT_SQUAD_V1": tmp_path / "v1.json",
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "no_proxy": "",
        "NO_PROXY": "",
    }
    with pytest.raises(nbclient.exceptions.CellExecutionError) as e:
        execute(EVALUATE, tmp_path, jupyter_path, monkeypatch, env)
    assert e.value.ename == "Stop" and not (tmp_path / "dev-v2.0.json").exists()
    # what the notebook shows under the cell: nbclient's message is the cell, a rule, then that
    shown = re.sub(r"\x1b\[[0-9;]*m", "", str(e.value)).rsplit("------------------", 1)[1].strip()
    assert len(shown.splitlines()) == 1, shown
    assert shown.startswith(
        "Stopped: cannot download https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json ("
    ) and shown.endswith("put the file beside the notebook, or set NPBERT_SQUAD to its path"), shown


def test_sdk_notebook(tiny_checkpoint, tmp_path, jupyter_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="the notebook plots with matplotlib (the viz extra)")
    out = execute(SDK, tmp_path, jupyter_path, monkeypatch, {"NPBERT_MODEL": tiny_checkpoint})
    text = "\n".join(out)
    assert "'score':" in out[0] and "windows of" in text and "image/png" in out[-1]
    assert "[CLS]" in text and "[SEP]" in text


def test_online_endpoint_notebook(tiny_checkpoint, tmp_path, jupyter_path, monkeypatch):
    pytest.importorskip("fastapi", reason="the endpoint notebook needs the serve extra (fastapi, uvicorn)")
    pytest.importorskip("uvicorn", reason="the endpoint notebook needs the serve extra (fastapi, uvicorn)")
    out = execute(ENDPOINT, tmp_path, jupyter_path, monkeypatch, {"NPBERT_MODEL": tiny_checkpoint})
    text = "\n".join(out)
    assert "200 {" in text and str(tiny_checkpoint) in text  # /health names the model
    assert re.search(r"\(422,\s*\{", text) and "must not be empty or blank" in text  # the error response
    assert re.search(r"\(200,\s*\[", text) and "exit status 0" in out[-1]  # /score's list of answers


def test_install_commands_work_from_a_clone():
    """npbert is not on the package index: README and docs install extras from the clone ('.[serve]'), and the
    README says how to get the notebooks running and what the tests' shared data is."""
    root = NOTEBOOKS.parents[1]
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        assert "install 'npbert[" not in text and 'install "npbert[' not in text, f"{page.name}: not installable"
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "pip install -e '.[notebooks]'" in readme and "NPBERT_SHARED_DIR" in readme and "docs/notebooks/" in readme
