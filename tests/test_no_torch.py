"""npbert never imports torch or transformers: loading and running the model (both kernel sets, both model
classes, float32 and float64) and importing every npbert module, in a fresh interpreter, leaves neither in
`sys.modules`. Runs whether or not they are installed: where they are, an import would be seen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "reference" / "distilbert"

SCRIPT = r"""
import importlib, json, pkgutil, sys
import numpy as np
import npbert

folder = sys.argv[1]
ran = []
for kernels in ("numba", "numpy"):
    for dtype in (np.float32, np.float64):
        model = npbert.DistilBertForQuestionAnswering.from_pretrained(folder, dtype=dtype, kernels=kernels)
        out = model([[3, 5, 6, 9, 0]], attention_mask=[[1, 1, 1, 1, 0]], output_hidden_states=True,
                    output_attentions=True)
        finite = bool(np.isfinite(out.end_logits).all())
        ran.append([kernels, np.dtype(dtype).name, list(out.start_logits.shape), finite])
encoder = npbert.DistilBertModel.from_pretrained(folder)
ran.append(["encoder", list(encoder([3, 5, 6]).last_hidden_state.shape)])

# Every module of the package, so an import at module level anywhere in npbert is seen. An optional
# extra that is not installed (a third-party module missing) is reported, not hidden.
unavailable = []
for info in pkgutil.walk_packages(npbert.__path__, "npbert."):
    if info.name == "npbert.__main__":  # runs the CLI when imported; it imports only npbert.cli
        continue
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in ("torch", "transformers"):
            raise
        unavailable.append([info.name, e.name])
banned = sorted(n for n in sys.modules if n.split(".")[0] in ("torch", "transformers"))
print(json.dumps({"ran": ran, "banned": banned, "unavailable": unavailable}))
"""


def test_loading_and_running_never_imports_torch_or_transformers():
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(FIXTURE)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["banned"] == [], (
        f"npbert imported {report['banned']} (unavailable optional modules: {report['unavailable']})"
    )
    assert report["ran"] == [
        ["numba", "float32", [1, 5], True],
        ["numba", "float64", [1, 5], True],
        ["numpy", "float32", [1, 5], True],
        ["numpy", "float64", [1, 5], True],
        ["encoder", [1, 3, 16]],
    ]
