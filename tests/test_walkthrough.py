"""Executes the documentation: every ```python block of docs/walkthrough.md in order in one namespace,
and the ```bash blocks of docs/walkthrough.md and docs/audit.md in a scratch folder, with the real model
id replaced by the tiny test checkpoint. A page whose examples break fails here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REAL_MODEL = "distilbert/distilbert-base-cased-distilled-squad"
BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)


def blocks(page: str, language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall((DOCS / page).read_text(encoding="utf-8")) if lang == language]


def localise(code: str, checkpoint: Path) -> str:
    return code.replace(REAL_MODEL, str(checkpoint)).replace("python tools/", f"{sys.executable} {ROOT / 'tools'}/")


def run_bash(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def sinusoidal_checkpoint(tmp_path_factory):
    # Sinusoidal positions, as the real checkpoint, so the audit page's position check runs (not skipped).
    import checkpoints

    return checkpoints.write_checkpoint(
        tmp_path_factory.mktemp("sin"), seed=4, qa_scale=40.0, sinusoidal_pos_embds=True, **checkpoints.TINY
    )


def test_walkthrough_python_examples_run(tiny_checkpoint, capsys):
    code = blocks("walkthrough.md", "python")
    assert len(code) >= 9, "the walkthrough lost its examples"
    namespace = {"__name__": "walkthrough"}
    for i, block in enumerate(code):
        try:
            exec(
                compile(localise(block, tiny_checkpoint), f"docs/walkthrough.md python block {i + 1}", "exec"),
                namespace,
            )
        except Exception as e:
            raise AssertionError(f"docs/walkthrough.md python block {i + 1} failed: {e!r}\n{block}") from e
    printed = capsys.readouterr().out
    assert f"'answer': {namespace['result']['answer']!r}" in printed and "[CLS]" in printed


def test_walkthrough_commands_run(tiny_checkpoint, tmp_path):
    (code,) = blocks("walkthrough.md", "bash")
    r = run_bash(localise(code, tiny_checkpoint), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "common tensors agree" in r.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"trace32.safetensors", "trace64.safetensors", "layer0.png"}
    assert (DOCS / "attention-example.png").is_file()


def test_audit_page_python_examples_run(tiny_checkpoint):
    code = blocks("audit.md", "python")
    assert code
    namespace = {"__name__": "audit_page"}
    for block in code:
        exec(compile(localise(block, tiny_checkpoint), "docs/audit.md", "exec"), namespace)
    assert namespace["reference"].dtype == "float64" and namespace["reference"].ops.name == "numpy"


def test_audit_page_commands_run(sinusoidal_checkpoint, tmp_path):
    code = blocks("audit.md", "bash")
    assert code, "docs/audit.md lost its examples"
    needs_transformers = [c for c in code if "export_transformers_activations" in c]
    for block in code:
        if block in needs_transformers:
            pytest.importorskip("transformers")
        r = run_bash(localise(block, sinusoidal_checkpoint), tmp_path)
        assert r.returncode == 0, f"{block}\n{r.stdout}{r.stderr}"
        if "npbert audit" in block:
            assert "[  ok   ] position table is sinusoidal" in r.stdout
