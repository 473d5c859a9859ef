"""The audit report: what exactly will run when npbert loads a checkpoint folder.

`audit(folder)` returns a JSON-ready dict: every file with its sha256, the config, every tensor of
model.safetensors (name, shape, dtype, sha256 of its stored bytes, mean, std, min, max), the parameter
count, checks (key set, shapes, dtypes, finite values, the position table against the sinusoidal
formula when the config sets `sinusoidal_pos_embds`, the tokenizer against the embedding table, the
strict loader), where a float32 load takes its re-laid matrices from (the shared cache entry of
relaid_cache.py, or a private copy) with every array it loads compared against a re-layout of
model.safetensors made without the cache, and the float32-vs-float64 drift of the logits on a sample
input. `format_text` renders it for a terminal.

The float64 forward on the plain-numpy reference kernels is the audit reference: the same code in
double precision, so float32 rounding is the only difference it can show (docs/audit.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import __version__, hub, relaid_cache, weights as W
from .config import Config

SAMPLE_QUESTION = "What's my name?"
SAMPLE_CONTEXT = "My name is John and I live in Seattle"
POSITION_TABLE_TOL = 1e-6  # the float32 rounding of sin/cos values is below 6e-8


def _files(folder: Path) -> list[dict]:
    return [
        {"name": p.name, "bytes": p.stat().st_size, "sha256": hub.sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".")
    ]


def _tensors(path: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Per-tensor facts, plus the position table (float64) for its check."""
    header, _, data_start = W.read_header(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    rows, values = [], {}
    for name, info in sorted(header.items(), key=lambda kv: kv[1].begin):
        raw = mm[data_start + info.begin : data_start + info.end]
        x = W.stored_array(mm, data_start, info)
        x = W.as_float(x, info.dtype, np.dtype(np.float64)) if info.dtype in W.FLOAT_DTYPES else x.astype(np.float64)
        if name.endswith("position_embeddings.weight"):
            values[name] = x
        stats = dict(mean=float(x.mean()), std=float(x.std()), min=float(x.min()), max=float(x.max())) if x.size else {}
        rows.append(
            {
                "name": name,
                "shape": list(info.shape),
                "dtype": info.dtype,
                "sha256": hashlib.sha256(raw).hexdigest(),
                **stats,
                "finite": bool(np.isfinite(x).all()),
            }
        )
    return rows, values


def _check(name: str, ok: bool | None, detail: str) -> dict:
    return {"name": name, "status": "skipped" if ok is None else ("ok" if ok else "fail"), "detail": detail}


def _checks(folder: Path, config: Config, rows: list[dict], values: dict) -> tuple[list[dict], bool, str]:
    stored = {r["name"]: r for r in rows}
    renames = W.legacy_renames(stored)  # old BERTs' LayerNorm.gamma/beta: read as weight/bias
    modern = {renames.get(n, n): n for n in stored}  # modern name -> stored name
    with_qa_head = "qa_outputs.weight" in stored
    expected = W.expected_shapes(config, with_qa_head)
    prefix = config.family.prefix + "."
    bare = not any(n in modern for n in expected if n.startswith(prefix))  # an encoder-only checkpoint
    key = lambda name: name.removeprefix(prefix) if bare else name  # noqa: E731  stored key of an expected name
    unused = W.unused_keys(config)
    missing = [n for n in expected if key(n) not in modern]
    known = {key(n) for n in expected} | unused
    unexpected = [n for n in modern if n not in known]
    ignored = [modern[n] for n in modern if n in unused]
    pooler = [n for n in ignored if ".pooler." in "." + n]
    checks = [
        _check(
            "key set complete",
            not missing and not unexpected,
            f"{len(expected)} tensors expected ({config.model_type}, "
            f"{'question answering' if with_qa_head else 'encoder only'})"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {unexpected}" if unexpected else "")
            + (f"; ignored {ignored}" if ignored else "")
            + ("; the pooler is unused: question-answering models are built without it" if pooler else "")
            + (f"; legacy names read as weight/bias: {sorted(renames)}" if renames else ""),
        )
    ]
    wrong = [
        f"{n}: {stored[modern[key(n)]]['shape']} (config says {list(s)})"
        for n, s in expected.items()
        if key(n) in modern and tuple(stored[modern[key(n)]]["shape"]) != s
    ]
    checks.append(_check("shapes consistent with config", not wrong, "; ".join(wrong) or "every shape matches"))
    not_float = [r["name"] for r in rows if r["name"] not in unused and r["dtype"] not in W.FLOAT_DTYPES]
    checks.append(
        _check(
            "float dtypes",
            not not_float,
            ", ".join(not_float) or ", ".join(sorted({r["dtype"] for r in rows if r["name"] not in unused})),
        )
    )
    bad = [r["name"] for r in rows if not r["finite"]]
    checks.append(_check("finite values", not bad, ", ".join(bad) or "no NaN or infinity"))
    pos = values.get(key(prefix + "embeddings.position_embeddings.weight"))
    if not config.sinusoidal_pos_embds:
        checks.append(_check("position table is sinusoidal", None, "config has sinusoidal_pos_embds false"))
    elif pos is None or pos.shape != (config.max_position_embeddings, config.dim):
        checks.append(_check("position table is sinusoidal", False, "no position table of the configured shape"))
    else:
        err = float(np.abs(pos - W.sinusoidal_table(*pos.shape)).max())
        checks.append(
            _check(
                "position table is sinusoidal",
                err <= POSITION_TABLE_TOL,
                f"max |stored - formula| = {err:.3g} (tolerance {POSITION_TABLE_TOL:g})",
            )
        )
    checks.append(_tokenizer_check(folder, config))
    loadable = all(c["status"] != "fail" for c in checks[:3])
    return checks, loadable, "qa" if with_qa_head else "encoder"


def _load_tokenizer(folder: Path, config: Config):
    from .tokenizer import Tokenizer

    return Tokenizer.from_folder(folder, config.model_type)


def _tokenizer_check(folder: Path, config: Config) -> dict:
    name = "tokenizer fits the embedding table"
    try:
        tokenizer = _load_tokenizer(folder, config)
    except (ValueError, OSError, ImportError) as e:  # ImportError: a SentencePiece model without the extra
        return _check(name, False, f"the tokenizer does not load as npbert ask would load it: {e}")
    n = tokenizer.backend.get_vocab_size(with_added_tokens=True)
    return _check(name, n <= config.vocab_size, f"{n} tokens, vocab_size {config.vocab_size}")


def sample_input(folder: Path, config: Config) -> tuple[dict, str]:
    """The catalog sample encoded as the pipeline does (e.g. [CLS] question [SEP] context [SEP], with token
    types where the model takes them), or, with no usable tokenizer, 32 fixed pseudo-random ids."""
    from .pipeline import model_inputs

    try:
        tokenizer = _load_tokenizer(folder, config)
        windows = tokenizer.encode_pair(SAMPLE_QUESTION, SAMPLE_CONTEXT, max_length=config.max_sequence_length)
        return model_inputs(windows[:1], tokenizer), f"question {SAMPLE_QUESTION!r}, context {SAMPLE_CONTEXT!r}"
    except (ValueError, OSError, ImportError):
        pass
    ids = np.random.default_rng(0).integers(0, config.vocab_size, size=(1, min(32, config.max_sequence_length)))
    return {"input_ids": ids}, "32 pseudo-random ids (seed 0): no usable tokenizer in the folder"


def drift(folder: Path, kind: str, inputs: dict) -> dict:
    """float32 (default kernels) against float64 (numpy reference kernels), same weights, same input."""
    from .model import AutoModel, AutoModelForQuestionAnswering

    cls = AutoModelForQuestionAnswering if kind == "qa" else AutoModel
    m32 = cls.from_pretrained(folder, dtype=np.float32)
    m64 = cls.from_pretrained(folder, dtype=np.float64, kernels="numpy")
    o32 = m32(**inputs, output_hidden_states=True)
    o64 = m64(**inputs, output_hidden_states=True)
    hidden = max(float(np.abs(a - b).max()) for a, b in zip(o32.hidden_states, o64.hidden_states))
    out = {
        "float32_kernels": m32.ops.name,
        "float64_kernels": m64.ops.name,
        "tokens": int(inputs["input_ids"].shape[1]),
        "max_abs_hidden_states": hidden,
    }
    if kind == "qa":
        for side in ("start", "end"):
            a, b = getattr(o32, side + "_logits"), getattr(o64, side + "_logits")
            out[f"max_abs_{side}_logits"] = float(np.abs(a - b).max())
            out[f"same_{side}_argmax"] = bool((a.argmax(-1) == b.argmax(-1)).all())
    return out


def _arrays(tree) -> list[np.ndarray]:
    """Every array of a weight tree (nested named tuples and tuples), in a fixed order."""
    if isinstance(tree, np.ndarray):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [a for item in tree for a in _arrays(item)]
    return []


def weights_source(folder: Path, kind: str) -> dict:
    """Where a float32 load, as `npbert ask` makes it, takes its re-laid matrices from (the shared cache entry,
    checked as it loads, or a private copy), and whether every array it loads equals that of a re-layout of
    model.safetensors made here without the cache."""
    from .model import AutoModel, AutoModelForQuestionAnswering

    loaded = (AutoModelForQuestionAnswering if kind == "qa" else AutoModel).from_pretrained(folder)
    tree = W.load(folder, loaded.config, np.float32, with_qa_head=kind == "qa")
    fresh = type(loaded)(loaded.config, tree, np.float32, loaded.ops.name)  # no weights file: private copies
    got, want = _arrays(loaded.weights), _arrays(fresh.weights)
    entries = sorted({str(e) for a in got if (e := relaid_cache.entry_of(a)) is not None})
    differ = len(got) != len(want) or sum(
        a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        for a, b in zip(got, want)
    )
    return {
        "served_from_cache": bool(entries),
        "cache_entries": entries,
        "arrays": len(got),
        "arrays_differing_from_model_safetensors": int(differ),
    }


def _weights_source_check(source: dict) -> dict:
    where = (
        f"served from the shared re-laid weights cache entry {', '.join(source['cache_entries'])}"
        if source["served_from_cache"]
        else "not from the re-laid weights cache (a private copy)"
    )
    differ = source["arrays_differing_from_model_safetensors"]
    return _check(
        "loaded weights equal model.safetensors",
        not differ,
        f"{where}; "
        + (
            f"{differ} of {source['arrays']} arrays differ from a re-layout of model.safetensors"
            if differ
            else f"all {source['arrays']} arrays equal a re-layout of model.safetensors made without the cache"
        ),
    )


def audit(path_or_repo_id: str | Path, revision: str | None = None) -> dict:
    """The full report for a checkpoint folder (or a hub id, resolved by hub.py)."""
    folder = hub.resolve(path_or_repo_id, revision)
    config_path = folder / "config.json"
    config = Config.from_file(config_path)
    weights_path = folder / "model.safetensors"
    if not weights_path.is_file():
        raise W.WeightsError(f"{weights_path}: weights file not found")
    rows, values = _tensors(weights_path)
    checks, loadable, kind = _checks(folder, config, rows, values)
    # A folder whose config.json names a question-answering class must hold its head: `npbert ask` needs it.
    architectures = _architectures(config_path)
    if any(a.endswith("ForQuestionAnswering") for a in architectures):
        checks.append(
            _check(
                "question-answering head present",
                kind == "qa",
                f"config.json names {', '.join(architectures)}; qa_outputs "
                + ("found" if kind == "qa" else "is missing: npbert ask and the pipeline refuse it"),
            )
        )
    stored = {r["name"]: r for r in rows}
    used = [n for n in stored if n not in W.unused_keys(config)]
    report = {
        "npbert_version": __version__,
        "model": str(path_or_repo_id),
        "folder": str(folder),
        "kind": "question answering" if kind == "qa" else "encoder",
        # The npbert classes that load the folder (the pipeline, `ask`, `eval`, `serve` need a QA one).
        "loads_as": (
            ["AutoModelForQuestionAnswering", _family_class(config), "AutoModel"] if kind == "qa" else ["AutoModel"]
        ),
        "files": _files(folder),
        "config": asdict(config),
        "tensors": rows,
        "parameters": int(sum(int(np.prod(stored[n]["shape"])) for n in used)),
    }
    if loadable:
        try:
            inputs, description = sample_input(folder, config)
            report["drift"] = {"input": description, **drift(folder, kind, inputs)}
            checks.append(_check("strict loader accepts the checkpoint", True, "float32 and float64 loads succeeded"))
            report["weights_source"] = weights_source(folder, kind)
            checks.append(_weights_source_check(report["weights_source"]))
        except (ValueError, OSError) as e:
            checks.append(_check("strict loader accepts the checkpoint", False, str(e)))
    else:
        checks.append(_check("strict loader accepts the checkpoint", None, "skipped: key set, shapes or dtypes failed"))
    report["checks"] = checks
    report["ok"] = all(c["status"] != "fail" for c in checks)
    return report


def _architectures(config_path: Path) -> list[str]:
    import json

    names = json.loads(config_path.read_text(encoding="utf-8")).get("architectures") or []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def _family_class(config: Config) -> str:
    from .model import AutoModelForQuestionAnswering

    return next(c.__name__ for c in AutoModelForQuestionAnswering.__subclasses__() if c.model_type == config.model_type)


def format_text(report: dict) -> str:
    """A terminal rendering of `audit`'s report (the JSON has every field)."""
    lines = [
        f"npbert {report['npbert_version']} audit of {report['model']} ({report['kind']})",
        f"folder: {report['folder']}",
        f"loads as: {', '.join(report['loads_as'])}"
        if report["ok"]
        else "loads as: nothing until the failed checks below are fixed",
        "",
        "files:",
    ]
    lines += [f"  {f['sha256']}  {f['bytes']:>12,d}  {f['name']}" for f in report["files"]]
    lines += ["", "config:"] + [f"  {k} = {v}" for k, v in report["config"].items()]
    w = max((len(t["name"]) for t in report["tensors"]), default=4)
    lines += [
        "",
        f"tensors ({len(report['tensors'])}; sha256 shortened here, full in --json):",
        f"  {'name':<{w}} {'shape':<11} {'dtype':<5} {'mean':>10} {'std':>10} {'min':>10} {'max':>10}  sha256",
    ]
    for t in report["tensors"]:
        stats = " ".join(f"{t.get(k, float('nan')):>10.4g}" for k in ("mean", "std", "min", "max"))
        lines.append(
            f"  {t['name']:<{w}} {'x'.join(map(str, t['shape'])):<11} {t['dtype']:<5} {stats}  {t['sha256'][:16]}"
        )
    lines += ["", f"parameters: {report['parameters']:,d}", "", "checks:"]
    lines += [f"  [{c['status']:^7}] {c['name']}: {c['detail']}" for c in report["checks"]]
    if "drift" in report:
        d = report["drift"]
        lines += [
            "",
            f"float32 ({d['float32_kernels']} kernels) vs float64 ({d['float64_kernels']} reference) on "
            f"{d['tokens']} tokens, {d['input']}:",
        ]
        lines += [
            f"  {k}: {v:.3g}" if isinstance(v, float) else f"  {k}: {v}"
            for k, v in d.items()
            if k.startswith(("max_abs", "same"))
        ]
    lines += ["", "result: " + ("all checks passed" if report["ok"] else "FAILED checks above")]
    return "\n".join(lines)
