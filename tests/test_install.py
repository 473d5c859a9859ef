"""The README's set-up, as a new user runs it in a fresh virtual environment: install npbert from the
clone, run `npbert ask` (numba compiles its kernels and caches them), then install it again editable
(`pip install -e`, as the README's test command does). Before npbert kept numba's cache in its own cache
folder, the first run wrote it into site-packages/npbert/__pycache__, pip's uninstall left those files,
and the leftover folder shadowed the editable install as an empty namespace package
(`cannot import name '__version__' from 'npbert' (unknown location)`).

Fast and offline: the fresh venv gets no packages from the index. Its site-packages holds a .pth naming a
folder of links to the running interpreter's packages (npbert itself left out), and pip builds npbert
with `--no-deps --no-build-isolation --no-index` (setuptools comes with the test extra).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import npbert

REPO = Path(__file__).resolve().parents[1]
QUESTION, CONTEXT = "Where do I live?", "My name is John and I live in Seattle."


def _is_npbert(name: str) -> bool:
    low = name.lower()
    return low == "npbert" or low.startswith(("npbert-", "__editable__.npbert", "__editable___npbert"))


@pytest.fixture
def fresh_venv(tmp_path):
    pytest.importorskip("setuptools", reason="building npbert without the index needs setuptools (the test extra)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    deps = tmp_path / "deps"
    deps.mkdir()
    for folder in dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")):
        for entry in Path(folder).iterdir():
            if not _is_npbert(entry.name) and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    (site / "zz-test-deps.pth").write_text(f"{deps}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR", "VIRTUAL_ENV")}
    env.update(
        NPBERT_CACHE=str(tmp_path / "cache"),
        XDG_CACHE_HOME=str(tmp_path / "xdg"),
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
    )
    return venv, site, env


def _clone(tmp_path) -> Path:
    src = tmp_path / "npbert-clone"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "npbert", src / "npbert", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _run(cmd, env, cwd):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert r.returncode == 0, f"{cmd}: {r.stdout}\n{r.stderr}"
    return r


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def test_install_run_then_editable_install_keeps_the_command_working(fresh_venv, tiny_checkpoint, tmp_path):
    venv, site, env = fresh_venv
    src = _clone(tmp_path)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    ask = [venv / "bin" / "npbert", "ask", "--model", tiny_checkpoint, "-q", QUESTION, "-c", CONTEXT, "--json"]
    expected = npbert.pipeline("question-answering", model=tiny_checkpoint)(question=QUESTION, context=CONTEXT)

    _run(pip + [src], env, tmp_path)
    installed = _files(site / "npbert")
    assert "__init__.py" in installed
    r = _run(ask, env, tmp_path)  # the first run: numba compiles every kernel and caches it
    assert json.loads(r.stdout) == expected
    assert _files(site / "npbert") == installed, "the first run wrote into the installed package"
    cached = list((tmp_path / "cache" / "numba").rglob("*.nbi"))
    assert cached, "numba's cache is not in npbert's cache folder"

    _run(pip + ["-e", src], env, tmp_path)
    r = _run([venv / "bin" / "npbert", "--version"], env, tmp_path)
    assert r.stdout.strip() == f"npbert {npbert.__version__}"
    r = _run([venv / "bin" / "python", "-c", "import npbert; print(npbert.__file__)"], env, tmp_path)
    assert Path(r.stdout.strip()) == src / "npbert" / "__init__.py"
    assert json.loads(_run(ask, env, tmp_path).stdout) == expected


def test_a_users_own_numba_cache_dir_is_kept(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    code = "import npbert.ops, numba.core.config as c, os; print(c.CACHE_DIR); print(os.environ['NUMBA_CACHE_DIR'])"
    default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert default.stdout.split() == [str(Path(env["NPBERT_CACHE"]) / "numba")] * 2, default.stderr
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")
    own = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert own.stdout.split() == [str(tmp_path / "mine")] * 2, own.stderr


def test_one_install_style_everywhere():
    """The README's set-up is two commands, both `pip install -e` from the clone, and every other install
    command the project prints or documents is the same style; CI runs the README's test command as written."""
    import re

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    setup = readme[readme.index("## Set-up") : readme.index("\n## ", readme.index("## Set-up") + 1)]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, re.S)
    assert commands[:2] == [
        'pip install -e . && npbert ask --question "What\'s my name?" --context "My name is John '
        'and I live in Seattle"',
        "pip install -e '.[test]' && python -m pytest",
    ]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert f"\n{commands[1]}\n" in ci
    texts = [
        REPO / "README.md",
        REPO / "pyproject.toml",
        *(REPO / "docs").rglob("*.md"),
        *(REPO / "docs" / "notebooks").glob("*.ipynb"),
        *(REPO / "npbert").rglob("*.py"),
    ]
    plain = [
        f"{p.relative_to(REPO)}: {m.group(0)}"
        for p in texts
        for m in re.finditer(r"pip install (?!-e )[^`\n]{0,30}", p.read_text(encoding="utf-8"))
        if "npbert" in m.group(0) or m.group(0).startswith(("pip install .", "pip install '."))
    ]
    assert plain == [], plain
