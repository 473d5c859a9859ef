"""npbert's folder for what it writes once and reuses, per user: one definition of where it is, and the
place numba's compiled kernels are cached.

The root is $NPBERT_CACHE, else $XDG_CACHE_HOME/npbert, else ~/.cache/npbert (the XDG base-directory rule,
as pip and huggingface-hub place theirs). relaid_cache.py keeps its re-laid weights under `relaid/`;
numba caches the kernels of ops/ and workers.py under `numba/`.

Why not numba's default: with `cache=True` numba writes its cache beside the source, into the installed
package's `__pycache__`. A later `pip install -e .` (or any uninstall) removes the files pip installed and
leaves numba's, so the leftover `site-packages/npbert/` folder imports as an empty namespace package and
shadows the new install (`cannot import name '__version__' from 'npbert' (unknown location)`); a read-only
system install cannot hold them at all. numba picks a cache folder when a kernel is decorated (its
`_UserProvidedCacheLocator.from_function` reads `numba.config.CACHE_DIR`, which numba read from
$NUMBA_CACHE_DIR at import), so `use_for_numba()` runs before the first decorator, in ops/__init__.py and
workers.py. A user's own $NUMBA_CACHE_DIR (or `cache_dir` in .numba_config.yaml) is kept. When the folder
cannot be made, numba falls back to its own locators (the package's `__pycache__` if writable, else
~/.cache, else no cache), as it did before.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "NPBERT_CACHE"
NUMBA_ENV = "NUMBA_CACHE_DIR"


def root() -> Path:
    """$NPBERT_CACHE, else $XDG_CACHE_HOME/npbert, else ~/.cache/npbert."""
    return Path(
        os.environ.get(ENV)
        or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "npbert")
    )


def use_for_numba() -> None:
    """Point numba's on-disk cache at root()/numba unless the user chose a folder. Also set in the
    environment: numba re-reads it when any NUMBA_ variable changes (config.reload_config), and the
    processes npbert starts (Dask workers, serve's workers) then cache in the same place."""
    import numba.core.config as numba_config

    if os.environ.get(NUMBA_ENV) or numba_config.CACHE_DIR:
        return
    folder = str(root() / "numba")
    os.environ[NUMBA_ENV] = folder
    numba_config.CACHE_DIR = folder
