"""The audit report (npbert/audit.py) and `npbert audit`, checked against values computed here
independently (hashlib, safetensors' own reader, numpy) and on deliberately broken checkpoints, and
whether the weights a load uses came from the re-laid weights cache and equal model.safetensors."""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import checkpoints
from npbert import audit as audit_module
from npbert.audit import audit, format_text


def npbert_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "npbert", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def copy_checkpoint(src, dst, edit=None, config_edit=None):
    shutil.copytree(src, dst)
    if edit:
        tensors = load_file(str(dst / "model.safetensors"))
        edit(tensors)
        save_file(tensors, str(dst / "model.safetensors"))
    if config_edit:
        cfg = json.loads((dst / "config.json").read_text())
        config_edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def status(report, name):
    return next(c for c in report["checks"] if c["name"] == name)["status"]


def test_report_facts_match_independent_computation(tiny_checkpoint):
    report = audit(tiny_checkpoint)
    files = sorted(p for p in tiny_checkpoint.iterdir() if p.is_file())
    assert [f["name"] for f in report["files"]] == [p.name for p in files]
    for f, p in zip(report["files"], files):
        assert f["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest() and f["bytes"] == p.stat().st_size
    stored = load_file(str(tiny_checkpoint / "model.safetensors"))
    rows = {t["name"]: t for t in report["tensors"]}
    assert set(rows) == set(stored)
    for name, x in stored.items():
        row, x64 = rows[name], x.astype(np.float64)
        assert row["shape"] == list(x.shape) and row["dtype"] == "F32"
        assert row["sha256"] == hashlib.sha256(x.tobytes()).hexdigest()
        assert row["mean"] == pytest.approx(x64.mean(), rel=1e-9, abs=1e-12)
        assert row["std"] == pytest.approx(x64.std(), rel=1e-9)
        assert (row["min"], row["max"]) == (x64.min(), x64.max())
    D, F, V, P, L = 32, 64, report["config"]["vocab_size"], 512, 2
    assert report["parameters"] == V * D + P * D + 2 * D + L * (4 * (D * D + D) + 4 * D + 2 * F * D + F + D) + 2 * D + 2
    assert report["parameters"] == sum(x.size for x in stored.values())
    assert report["config"]["dim"] == 32 and report["config"]["n_layers"] == 2
    assert {c["name"]: c["status"] for c in report["checks"]} == {
        "key set complete": "ok",
        "question-answering head present": "ok",
        "shapes consistent with config": "ok",
        "float dtypes": "ok",
        "finite values": "ok",
        "position table is sinusoidal": "skipped",
        "tokenizer fits the embedding table": "ok",
        "strict loader accepts the checkpoint": "ok",
        "loaded weights equal model.safetensors": "ok",
    }
    assert report["ok"] is True
    assert report["loads_as"] == ["AutoModelForQuestionAnswering", "DistilBertForQuestionAnswering", "AutoModel"]
    d = report["drift"]
    from tokenizers import Tokenizer

    n = len(
        Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json")).encode(
            "What's my name?", "My name is John and I live in Seattle"
        )
    )
    assert d["tokens"] == n and d["float64_kernels"] == "numpy"
    assert 0 < d["max_abs_start_logits"] < 1e-4 and 0 < d["max_abs_end_logits"] < 1e-4
    assert 0 < d["max_abs_hidden_states"] < 1e-4 and d["same_start_argmax"] and d["same_end_argmax"]
    text = format_text(report)
    assert "result: all checks passed" in text and f"parameters: {report['parameters']:,d}" in text


def test_sinusoidal_position_table_checked(tmp_path):
    good = checkpoints.write_checkpoint(tmp_path / "sin", seed=3, sinusoidal_pos_embds=True, **checkpoints.TINY)
    report = audit(good)
    check = next(c for c in report["checks"] if c["name"] == "position table is sinusoidal")
    assert check["status"] == "ok" and "max |stored - formula|" in check["detail"]

    def shift(t):  # one entry off by 1e-3: a table not made by the formula
        t["distilbert.embeddings.position_embeddings.weight"][7, 3] += np.float32(1e-3)

    bad = copy_checkpoint(good, tmp_path / "bad", edit=shift)
    report = audit(bad)
    assert status(report, "position table is sinusoidal") == "fail" and report["ok"] is False
    r = npbert_cli("audit", "--model", bad)
    assert r.returncode == 1 and "[ fail  ] position table is sinusoidal" in r.stdout and "FAILED" in r.stdout


def test_broken_checkpoints_fail_the_right_checks(tiny_checkpoint, tmp_path):
    missing = copy_checkpoint(
        tiny_checkpoint, tmp_path / "missing", edit=lambda t: t.pop("distilbert.transformer.layer.1.ffn.lin2.bias")
    )
    report = audit(missing)
    assert status(report, "key set complete") == "fail"
    assert "distilbert.transformer.layer.1.ffn.lin2.bias" in report["checks"][0]["detail"]
    assert status(report, "strict loader accepts the checkpoint") == "skipped" and "drift" not in report

    wide = copy_checkpoint(tiny_checkpoint, tmp_path / "wide", config_edit=lambda c: c.update(hidden_dim=128))
    report = audit(wide)
    assert status(report, "key set complete") == "ok" and status(report, "shapes consistent with config") == "fail"
    assert "ffn.lin1.weight: [64, 32] (config says [128, 32])" in report["checks"][1]["detail"]

    def poison(t):
        t["distilbert.transformer.layer.0.attention.v_lin.weight"][0, 0] = np.nan

    nan = copy_checkpoint(tiny_checkpoint, tmp_path / "nan", edit=poison)
    report = audit(nan)
    assert status(report, "finite values") == "fail"
    assert report["checks"][3]["detail"] == "distilbert.transformer.layer.0.attention.v_lin.weight"

    r = npbert_cli("audit", "--model", missing, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["ok"] is False
    r = npbert_cli("audit", "--model", tmp_path / "nowhere")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_encoder_checkpoint_without_tokenizer(tiny_checkpoint, tmp_path):
    folder = tmp_path / "encoder"
    folder.mkdir()
    shutil.copy(tiny_checkpoint / "config.json", folder)
    tensors = load_file(str(tiny_checkpoint / "model.safetensors"))
    save_file(
        {k.removeprefix("distilbert."): v for k, v in tensors.items() if not k.startswith("qa_outputs")},
        str(folder / "model.safetensors"),
    )
    report = audit(folder)
    assert report["kind"] == "encoder" and status(report, "key set complete") == "ok"
    assert status(report, "tokenizer fits the embedding table") == "fail"
    assert "pseudo-random" in report["drift"]["input"] and report["drift"]["tokens"] == 32
    assert "max_abs_start_logits" not in report["drift"] and report["drift"]["max_abs_hidden_states"] < 1e-4


def test_audit_command_json_is_the_library_report(tiny_checkpoint):
    r = npbert_cli("audit", "--model", tiny_checkpoint, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads(json.dumps(audit(tiny_checkpoint)))
    r = npbert_cli("audit", "--model", tiny_checkpoint)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("result: all checks passed")
    assert "distilbert.transformer.layer.1.ffn.lin1.weight" in r.stdout and "parameters:" in r.stdout


SOURCE_CHECK = "loaded weights equal model.safetensors"


def test_audit_says_whether_the_weights_came_from_the_cache_and_checks_them(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("NPBERT_CACHE", str(tmp_path / "cache"))
    report = audit(tiny_checkpoint)
    source = report["weights_source"]
    [entry] = (tmp_path / "cache" / "relaid").glob("*-float32-*.bin")  # (and the float64 load's)
    assert source["served_from_cache"] and source["cache_entries"] == [str(entry)]
    assert source["arrays_differing_from_model_safetensors"] == 0 and status(report, SOURCE_CHECK) == "ok"
    assert f"served from the shared re-laid weights cache entry {entry}" in format_text(report)

    blocker = tmp_path / "a-file"  # the cache unusable: a private copy, and the audit says so
    blocker.write_text("")
    monkeypatch.setenv("NPBERT_CACHE", str(blocker))
    report = audit(tiny_checkpoint)
    assert not report["weights_source"]["served_from_cache"] and report["weights_source"]["cache_entries"] == []
    assert status(report, SOURCE_CHECK) == "ok" and "a private copy" in format_text(report)


def test_audit_fails_when_the_loaded_weights_differ_from_model_safetensors(tiny_checkpoint, monkeypatch):
    # The loaded weights against a reference with one value changed: the comparison must see it (the cache
    # itself refuses a changed entry before the audit could, test_relaid_cache.py).
    real_load = audit_module.W.load

    def load(folder, config, dtype, **kwargs):
        tree = real_load(folder, config, dtype, **kwargs)
        if any(frame.function == "weights_source" for frame in inspect.stack()[1:3]):  # only the audit's reference
            weight = np.array(tree.qa_outputs.weight)  # the file's pages are read-only: a changed copy
            weight[0, 0] += 1.0
            tree = tree._replace(qa_outputs=tree.qa_outputs._replace(weight=weight))
        return tree

    monkeypatch.setattr(audit_module.W, "load", load)
    report = audit(tiny_checkpoint)
    assert report["weights_source"]["arrays_differing_from_model_safetensors"] == 1
    assert status(report, SOURCE_CHECK) == "fail" and not report["ok"]
    assert "1 of " in next(c["detail"] for c in report["checks"] if c["name"] == SOURCE_CHECK)
