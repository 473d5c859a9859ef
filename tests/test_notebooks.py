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
EVALUATE, SDK, ENDPOINT = ("evaluate-model-question-answering.ipynb", "sdk-example.ipynb",
                           "question-answering-online-endpoint.ipynb")
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
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "npbert tests", "language": "python"}))
    return root


def execute(name: str, folder: Path, jupyter_path: Path, monkeypatch, env: dict) -> list[str]:
    """Run the notebook in `folder`; returns each code cell's outputs as text (images as 'image/png')."""
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    nb = read(name)
    nbclient.NotebookClient(nb, timeout=600, kernel_name=KERNEL, resources={"metadata": {"path": str(folder)}}).execute()
    texts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        parts = []
        for out in cell.outputs:
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                parts.append("image/png" if "image/png" in out.data else out.data.get("text/markdown",
                                                                                      out.data.get("text/plain", "")))
        texts.append("\n".join(parts))
    return texts


def test_evaluate_notebook(tiny_checkpoint, tmp_path, jupyter_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="the notebook plots with matplotlib (the viz extra)")
    v2, v1 = tmp_path / "v2.json", tmp_path / "v1.json"
    v2.write_text(json.dumps(make_squad(30, "2.0", seed=1)), encoding="utf-8")
    v1.write_text(json.dumps(make_squad(30, "1.1", seed=2)), encoding="utf-8")
    out = execute(EVALUATE, tmp_path, jupyter_path, monkeypatch, {
        "NPBERT_MODEL": tiny_checkpoint, "NPBERT_SQUAD": v2, "NPBERT_SQUAD_V1": v1, "NPBERT_LIMIT": 24,
        "NPBERT_OUT": tmp_path / "eval"})
    text = "\n".join(out)
    assert "| HasAns |" in text and "| NoAns |" in text and "best F1" in text
    assert "| question | gold | prediction | F1 | no-answer prob. |" in text and "image/png" in text
    assert "SQuAD v1.1: EM" in text and "over 24 questions" in text
    metrics = json.loads((tmp_path / "eval" / "v2" / "metrics.json").read_text())
    assert metrics["total"] == 24 and f"{metrics['best_f1']:.2f}" in text


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
