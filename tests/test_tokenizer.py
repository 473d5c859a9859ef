"""npbert.tokenizer on the DistilBERT test checkpoint against transformers 4.57.6 DistilBertTokenizerFast (the
pipeline's own call), and its window structure against the untruncated encoding (no transformers needed).
The other families and layouts: tests/test_tokenizer_families.py."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
from hypothesis import given, strategies as st

import tokenizer_helpers as helpers
from npbert.tokenizer import Tokenizer

UNICODE_CONTEXTS, QUESTIONS = helpers.UNICODE_CONTEXTS, helpers.QUESTIONS
transformers_tokenizer = helpers.reference_tokenizer
transformers_windows = helpers.reference_windows
npbert_windows = helpers.npbert_windows


def assert_same_as_transformers(folder, pairs, settings=((384, 128), (40, 10), (24, 0))):
    ref, tok = transformers_tokenizer(folder), Tokenizer.from_folder(folder)
    checked = 0
    for question, context in pairs:
        for max_length, stride in settings:
            try:
                expected = transformers_windows(ref, question, context, max_length, stride)
            except BaseException as e:  # tokenizers' truncation error is a PanicException (BaseException)
                if isinstance(e, KeyboardInterrupt):
                    raise
                with pytest.raises(ValueError):
                    tok.encode_pair(question, context, max_length, stride)
                continue
            assert npbert_windows(tok, question, context, max_length, stride) == expected, (question, context)
            checked += 1
    assert checked >= len(pairs)  # most settings encode: the comparison really ran


def test_tokenizer_json_equals_transformers(tiny_checkpoint):
    assert_same_as_transformers(tiny_checkpoint, [(q, c) for q in QUESTIONS[:3] for c in UNICODE_CONTEXTS])


def test_padding_and_p_mask_equal_transformers(tiny_checkpoint):
    ref, tok = transformers_tokenizer(tiny_checkpoint), Tokenizer.from_folder(tiny_checkpoint)
    context = " ".join(UNICODE_CONTEXTS)
    for padding in ("longest", "max_length", True):
        assert npbert_windows(tok, "Who?", context, 64, 16, padding) == transformers_windows(
            ref, "Who?", context, 64, 16, padding
        )
    for w in tok.encode_pair("Who is it?", context, 64, 16, "max_length"):
        expected = [s != 1 for s in w.sequence_ids]  # the pipeline's p_mask, [CLS] then unmasked
        expected[0] = False
        assert w.p_mask.tolist() == expected and len(w) == 64


def folder_copy(src, dst, drop=(), config=None):
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in drop and f.suffix != ".safetensors":
            shutil.copy(f, dst / f.name)
    if config is not None:
        d = json.loads((dst / "tokenizer_config.json").read_text())
        d.update(config)
        (dst / "tokenizer_config.json").write_text(json.dumps(d))
    return dst


@pytest.mark.parametrize("lower", [False, True])
def test_vocab_txt_fallback_equals_transformers(tiny_checkpoint, tmp_path, lower):
    """Without tokenizer.json both build the BERT WordPiece tokenizer from vocab.txt (do_lower_case honoured)."""
    folder = folder_copy(
        tiny_checkpoint, tmp_path / "vocab_only", drop=("tokenizer.json",), config={"do_lower_case": lower}
    )
    tok = Tokenizer.from_folder(folder)
    assert tok.do_lower_case is lower
    assert_same_as_transformers(folder, [(QUESTIONS[0], c) for c in UNICODE_CONTEXTS[:10]], settings=((384, 128),))
    cased = Tokenizer.from_folder(tiny_checkpoint).tokenize("The Café")
    assert (tok.tokenize("The Café") == cased) is (not lower)


def test_config_flags_override_tokenizer_json(tiny_checkpoint, tmp_path):
    """DistilBertTokenizerFast rebuilds the normalizer when tokenizer_config.json disagrees with it."""
    folder = folder_copy(tiny_checkpoint, tmp_path / "lower", config={"do_lower_case": True, "strip_accents": True})
    assert_same_as_transformers(folder, [("Où est CAFÉ?", c) for c in UNICODE_CONTEXTS[:4]], settings=((384, 128),))
    assert Tokenizer.from_folder(folder).tokenize("CAFÉ") != Tokenizer.from_folder(tiny_checkpoint).tokenize("CAFÉ")


def test_model_max_length_from_config(tiny_checkpoint, tmp_path):
    assert Tokenizer.from_folder(tiny_checkpoint).model_max_length == 512
    folder = folder_copy(tiny_checkpoint, tmp_path / "nolimit")
    d = json.loads((folder / "tokenizer_config.json").read_text())
    del d["model_max_length"]
    (folder / "tokenizer_config.json").write_text(json.dumps(d))
    assert Tokenizer.from_folder(folder).model_max_length == int(1e30)  # transformers' VERY_LARGE_INTEGER


def test_squad_dev_contexts_equal_transformers(tiny_checkpoint, squad_dev, shared_vocab):
    """Real text: a fixed subsample of SQuAD v1.1 dev questions with their contexts, at the pipeline's
    default window settings, plus short windows so most contexts overflow."""
    data = json.loads(squad_dev.read_text(encoding="utf-8"))["data"]
    pairs = [(qa["question"], p["context"]) for a in data for p in a["paragraphs"] for qa in p["qas"]]
    sample = random.Random(0).sample(pairs, 150)
    ref, tok = transformers_tokenizer(tiny_checkpoint), Tokenizer.from_folder(tiny_checkpoint)
    windows = 0
    for question, context in sample:
        for max_length, stride in ((384, 128), (96, 32)):
            expected = transformers_windows(ref, question, context, max_length, stride)
            assert npbert_windows(tok, question, context, max_length, stride) == expected, question
            windows += len(expected)
    assert windows > 2 * len(sample)  # the short setting really produced overflow windows


# --- structure, without transformers ---------------------------------------------------------------------

texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300)


@given(question=texts, context=texts, max_length=st.integers(16, 80), stride=st.integers(0, 12))
def test_windows_cover_the_context_with_stride_overlap(tiny_checkpoint, question, context, max_length, stride):
    tok = _tok(tiny_checkpoint)
    full = tok.backend.encode(question, context)
    q_tokens = [t for t, s in zip(full.ids, full.sequence_ids) if s == 0]
    c_tokens = [(t, o) for t, o, s in zip(full.ids, full.offsets, full.sequence_ids) if s == 1]
    try:
        windows = tok.encode_pair(question, context, max_length, stride)
    except ValueError:
        assert len(full.ids) > max_length and max_length - len(q_tokens) - 3 <= stride
        return
    covered = []
    for i, w in enumerate(windows):
        assert len(w) <= max_length and w.input_ids[0] == tok.cls_token_id
        seq = np.array([-1 if s is None else s for s in w.sequence_ids])
        assert w.input_ids[seq == 0].tolist() == q_tokens  # the whole question in every window
        ctx = list(zip(w.input_ids[seq == 1].tolist(), map(tuple, w.offsets[seq == 1].tolist())))
        if i:  # consecutive windows share exactly `stride` context tokens
            assert ctx[:stride] == covered[-stride:] if stride else True
            ctx = ctx[stride:]
        covered += ctx
        assert not w.p_mask[0] and w.p_mask.tolist()[1:] == (seq[1:] != 1).tolist()
    assert covered == [(t, tuple(o)) for t, o in c_tokens]


_TOKENIZERS = {}


def _tok(folder):
    # one instance per folder: hypothesis calls the test many times
    return _TOKENIZERS.setdefault(folder, Tokenizer.from_folder(folder))


def test_errors(tiny_checkpoint, tmp_path):
    tok = Tokenizer.from_folder(tiny_checkpoint)
    for bad in ("", None, 3):
        with pytest.raises(ValueError, match="question"):
            tok.encode_pair(bad, "context")
        with pytest.raises(ValueError, match="context"):
            tok.encode_pair("question", bad)
    with pytest.raises(ValueError, match="no room is left for the context"):
        tok.encode_pair("word " * 40, "context " * 40, max_length=32, stride=4)
    with pytest.raises(ValueError, match="doc_stride 9 must be smaller"):
        tok.encode_pair("word " * 20, "context " * 40, max_length=32, stride=9)
    with pytest.raises(ValueError, match="padding"):
        tok.encode_pair("q", "c", padding="sideways")
    with pytest.raises(OSError, match="no tokenizer.json or vocab.txt"):
        Tokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_folder(tmp_path)


def test_plain_helpers(tiny_checkpoint, shared_vocab):
    tok = Tokenizer.from_folder(tiny_checkpoint)
    assert tok.tokenize("The Seattle") == ["The", "Seattle"]
    ids = tok.encode("The", "the")
    assert ids == [101, 1109, 102, 1103, 102]  # ids of the real cased vocabulary (../shared/data/README.md)
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "The", "[SEP]", "the", "[SEP]"]


def test_encode_pairs_equals_one_pair_at_a_time(tiny_checkpoint):
    """The batched call the pipeline makes gives each pair what encoding it alone gives ("longest"
    padding included: transformers encodes one input at a time)."""
    tok = Tokenizer.from_folder(tiny_checkpoint)
    questions, contexts = QUESTIONS[:4], UNICODE_CONTEXTS[:4]
    for padding in ("do_not_pad", "longest", "max_length"):
        batched = tok.encode_pairs(questions, contexts, 32, 8, padding)
        for q, c, windows in zip(questions, contexts, batched):
            single = tok.encode_pair(q, c, 32, 8, padding)
            assert [w.input_ids.tolist() for w in windows] == [w.input_ids.tolist() for w in single]
            assert [w.offsets.tolist() for w in windows] == [w.offsets.tolist() for w in single]
    lengths = {len(w) for ws in tok.encode_pairs(questions, contexts, 384, 128, "longest") for w in ws}
    assert len(lengths) > 1  # not padded across pairs
