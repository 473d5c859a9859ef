"""npbert.tokenizer for every family and file layout against transformers 4.57.6 `AutoTokenizer` called as its
QA pipeline calls it; thread safety; one-line errors for broken tokenizer files.

The tokenizers are trained here (tests/tokenizer_helpers.py), once per session: WordPiece from the real
vocabulary, byte-level BPE (RoBERTa), SentencePiece BPE and unigram (XLM-R, ALBERT, DeBERTa-v3), each without
and with the tokenizer.json transformers' `save_pretrained` writes.
"""

from __future__ import annotations

import json
import sys
import threading

import numpy as np
import pytest

import tokenizer_helpers as helpers
from npbert.tokenizer import VERY_LARGE_INTEGER, Tokenizer


def _json(base):
    return lambda root, get: helpers.with_tokenizer_json(get(base), root)


def _edited(base, name="tokenizer_config.json", **changes):
    def make(root, get):
        import shutil

        shutil.copytree(get(base), root)
        if not (root / name).is_file():
            (root / name).write_text("{}")
        return helpers.edit_config(root, name, **changes)

    return make


# name -> how to make the folder (in `root`; `get` gives another layout's folder)
LAYOUTS = {
    "bert-cased/vocab.txt": lambda root, get: helpers.wordpiece_folder(root, lowercase=False),
    "bert-uncased/vocab.txt": lambda root, get: helpers.wordpiece_folder(root, lowercase=True),
    "electra-uncased/vocab.txt": lambda root, get: helpers.wordpiece_folder(root, True, model_type="electra"),
    "distilbert-cased/vocab.txt": lambda root, get: helpers.wordpiece_folder(root, False, model_type="distilbert"),
    "bert-cased/tokenizer.json": _json("bert-cased/vocab.txt"),
    "bert-cased-left-truncation/vocab.txt": _edited("bert-cased/vocab.txt", truncation_side="left"),
    "bert-uncased/tokenizer.json": _json("bert-uncased/vocab.txt"),
    "roberta/vocab.json": lambda root, get: helpers.roberta_folder(root),
    "roberta-prefix-space/vocab.json": lambda root, get: helpers.roberta_folder(root, add_prefix_space=True),
    "roberta/tokenizer.json": _json("roberta/vocab.json"),
    # special_tokens_map.json with AddedToken objects, as older repositories (deepset's) carry it
    "roberta-special-tokens-map/vocab.json": _edited(
        "roberta/vocab.json",
        name="special_tokens_map.json",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        sep_token="</s>",
        pad_token="<pad>",
        cls_token="<s>",
        mask_token={"content": "<mask>", "single_word": False, "lstrip": True, "rstrip": False, "normalized": True},
    ),
    # tokenizer_config.json disagreeing with tokenizer.json: RobertaTokenizerFast.__init__ rebuilds the
    # pre-tokenizer and post-processor
    "roberta-prefix-untrimmed/tokenizer.json": _edited(
        "roberta/tokenizer.json", add_prefix_space=True, trim_offsets=False
    ),
    "xlm-roberta-bpe/sentencepiece.bpe.model": lambda root, get: helpers.sentencepiece_folder(root, "xlmr"),
    "xlm-roberta-unigram/sentencepiece.bpe.model": lambda root, get: helpers.sentencepiece_folder(
        root, "xlmr", model_type="unigram"
    ),
    "xlm-roberta-bpe/tokenizer.json": _json("xlm-roberta-bpe/sentencepiece.bpe.model"),
    "albert/spiece.model": lambda root, get: helpers.sentencepiece_folder(root, "albert"),
    "albert-cased-accents/spiece.model": _edited("albert/spiece.model", do_lower_case=False, keep_accents=True),
    "albert/tokenizer.json": _json("albert/spiece.model"),
    "deberta-v3/spm.model": lambda root, get: helpers.sentencepiece_folder(root, "deberta"),
    "deberta-v3-bpe/spm.model": lambda root, get: helpers.sentencepiece_folder(root, "deberta", model_type="bpe"),
    "deberta-v3-lower-punct/spm.model": _edited("deberta-v3/spm.model", do_lower_case=True, split_by_punct=True),
    "deberta-v3/tokenizer.json": _json("deberta-v3/spm.model"),
    # --- layouts transformers itself writes, with added tokens (issue 27) ---
    # DeBERTa-v3 on a SentencePiece model without [CLS]/[SEP]: DebertaV2TokenizerFast(vocab_file=...) declares them
    # (and [UNK] [PAD] [MASK]) as added tokens in tokenizer_config.json's added_tokens_decoder and added_tokens.json
    "deberta-v3-fast-saved/spm.model": lambda root, get: helpers.saved_by_transformers(
        root,
        "DebertaV2TokenizerFast",
        helpers.plain_sentencepiece(root.parent / "plain.model"),
        "deberta-v2",
        keep=("spm.model", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"),
    ),
    "deberta-v3-fast-saved/tokenizer.json": lambda root, get: helpers.saved_by_transformers(
        root, "DebertaV2TokenizerFast", helpers.plain_sentencepiece(root.parent / "plain.model"), "deberta-v2"
    ),
    # only spm.model, tokenizer_config.json and added_tokens.json {"[MASK]": <vocabulary size>}, as real DeBERTa-v3
    # fine-tunes ship [MASK] at 128000
    "deberta-v3-mask-added-tokens/spm.model": lambda root, get: helpers.with_added_tokens_json(
        get("deberta-v3/spm.model"), root, ["[MASK]"]
    ),
    # only spiece.model (no [CLS]/[SEP] pieces) and config.json: AlbertTokenizer adds its special tokens
    "albert-spiece-only/spiece.model": lambda root, get: helpers.saved_by_transformers(
        root,
        "AlbertTokenizer",
        helpers.plain_sentencepiece(root.parent / "plain.model"),
        "albert",
        keep=("spiece.model",),
    ),
    "albert-slow-saved/spiece.model": lambda root, get: helpers.saved_by_transformers(
        root,
        "AlbertTokenizer",
        helpers.plain_sentencepiece(root.parent / "plain.model"),
        "albert",
        add_tokens=["<e1>", "</e1>"],
    ),
    # vocab.txt + added_tokens.json entity markers, no tokenizer_config.json (older fine-tuned checkpoints)
    "bert-added-tokens/vocab.txt": lambda root, get: helpers.with_added_tokens_json(
        get("bert-uncased/vocab.txt"), root, ["<e1>", "</e1>", "<e2>", "</e2>"]
    ),
    # what BertTokenizer / BertTokenizerFast with added tokens save (the slow one writes no tokenizer.json)
    "bert-added-tokens-slow-saved/vocab.txt": lambda root, get: helpers.saved_by_transformers(
        root,
        "BertTokenizer",
        get("bert-cased/vocab.txt") / "vocab.txt",
        "bert",
        do_lower_case=False,
        add_tokens=["<e1>", "</e1>", "HUGGINGFACE"],
        add_special_tokens=["[ENT]"],
    ),
    "bert-added-tokens-fast-saved/tokenizer.json": lambda root, get: helpers.saved_by_transformers(
        root,
        "BertTokenizerFast",
        get("bert-cased/vocab.txt") / "vocab.txt",
        "bert",
        do_lower_case=False,
        add_tokens=["<e1>", "</e1>"],
        add_special_tokens=["[ENT]"],
    ),
    "bert-added-tokens-fast-saved/vocab.txt": lambda root, get: helpers.saved_by_transformers(
        root,
        "BertTokenizerFast",
        get("bert-cased/vocab.txt") / "vocab.txt",
        "bert",
        do_lower_case=False,
        add_tokens=["<e1>", "</e1>"],
        add_special_tokens=["[ENT]"],
        keep=("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"),
    ),
    "albert-fast-saved/spiece.model": lambda root, get: helpers.saved_by_transformers(
        root,
        "AlbertTokenizerFast",
        helpers.plain_sentencepiece(root.parent / "plain.model"),
        "albert",
        add_tokens=["<e1>"],
        keep=("spiece.model", "tokenizer_config.json", "special_tokens_map.json"),
    ),
    "deberta-v3-slow-saved/spm.model": lambda root, get: helpers.saved_by_transformers(
        root,
        "DebertaV2Tokenizer",
        helpers.plain_sentencepiece(root.parent / "plain.model"),
        "deberta-v2",
        add_tokens=["<e1>", "</e1>"],
        do_lower_case=True,
    ),
    "xlm-roberta-slow-saved/sentencepiece.bpe.model": lambda root, get: helpers.saved_by_transformers(
        root,
        "XLMRobertaTokenizer",
        get("xlm-roberta-bpe/sentencepiece.bpe.model") / "sentencepiece.bpe.model",
        "xlm-roberta",
        add_tokens=["<e1>"],
        add_special_tokens=["<ent>"],
    ),
    "roberta-slow-saved/vocab.json": lambda root, get: helpers.saved_by_transformers(
        root,
        "RobertaTokenizer",
        get("roberta/vocab.json") / "vocab.json",
        "roberta",
        merges_file=str(get("roberta/vocab.json") / "merges.txt"),
        add_tokens=["<e1>"],
        add_special_tokens=["<ent>"],
    ),
    # tokenizer_config.json options the slow tokenizers honour, on the vocabulary-only layouts
    "bert-no-basic-tokenize/vocab.txt": _edited("bert-uncased/vocab.txt", do_basic_tokenize=False),
    "bert-options/vocab.txt": _edited(
        "bert-cased/vocab.txt",
        do_lower_case=True,
        strip_accents=False,
        tokenize_chinese_chars=False,
        never_split=["[SEP]", "HUGGINGFACE"],
    ),
    # a vocab.txt without [CLS] and [SEP]: BertTokenizer adds them after the vocabulary
    "bert-no-cls-sep/vocab.txt": lambda root, get: helpers.without_vocab_lines(
        get("bert-cased/vocab.txt"), root, ["[CLS]", "[SEP]"]
    ),
    "roberta-added-tokens/vocab.json": lambda root, get: helpers.with_added_tokens_json(
        get("roberta/vocab.json"), root, ["<e1>", "</e1>"]
    ),
    "roberta-untrimmed/vocab.json": _edited("roberta/vocab.json", add_prefix_space=True, trim_offsets=False),
    "xlm-roberta-added-tokens/sentencepiece.bpe.model": lambda root, get: helpers.with_added_tokens_json(
        get("xlm-roberta-bpe/sentencepiece.bpe.model"), root, ["<e1>", "</e1>"]
    ),
}
NEEDS_SENTENCEPIECE = ("xlm-roberta", "albert", "deberta")
# Layouts whose backend another layout already checks in full (same files, another class or a changed
# config flag): every fourth case, to keep the file fast.
VARIANTS = (
    "electra-uncased/vocab.txt",
    "bert-cased-left-truncation/vocab.txt",
    "distilbert-cased/vocab.txt",
    "bert-cased/tokenizer.json",
    "roberta-prefix-untrimmed/tokenizer.json",
    "roberta-special-tokens-map/vocab.json",
    "albert-cased-accents/spiece.model",
    "deberta-v3-bpe/spm.model",
    "deberta-v3/tokenizer.json",
)


@pytest.fixture(scope="session")
def layout_folder(tmp_path_factory):
    """Makes a layout's folder the first time a test asks for it."""
    made = {}

    def get(name):
        if name not in made:
            if name.startswith(NEEDS_SENTENCEPIECE):
                pytest.importorskip("sentencepiece", reason="sentencepiece (the sentencepiece extra) is not installed")
            root = tmp_path_factory.mktemp("layout") / name.replace("/", "_")
            made[name] = LAYOUTS[name](root, get)
        return made[name]

    return get


def _settings_and_pairs():
    """(question, context, max_length, stride, padding) cases: SQuAD dev pairs at the pipeline's defaults and
    with short windows, unicode text, long contexts that make many windows, and the padding strategies."""
    cases = []
    for i, (question, context) in enumerate(helpers.squad_pairs(200)):
        cases.append((question, context, 384, 128, "do_not_pad"))
        if i % 2:
            cases.append((question, context, 64, 16, "do_not_pad"))
    for question in helpers.QUESTIONS[:3]:
        for context in helpers.UNICODE_CONTEXTS:
            cases += [(question, context, 384, 128, "do_not_pad"), (question, context, 24, 4, "do_not_pad")]
    for i, context in enumerate(helpers.long_contexts(10)):
        cases += [
            (helpers.QUESTIONS[i % 5], context, 128, 32, "do_not_pad"),
            (helpers.QUESTIONS[i % 5], context, 384, 128, "do_not_pad"),
        ]
    for question, context in helpers.squad_pairs(10, seed=1):
        cases += [(question, context, 96, 24, "max_length"), (question, context, 96, 24, "longest")]
    return cases


CASES = _settings_and_pairs()


def _refuses(ref, question, context, max_length, stride, padding):
    """transformers' tokenizers-library truncation error (a PanicException, a BaseException), or None."""
    try:
        return helpers.reference_windows(ref, question, context, max_length, stride, padding)
    except Exception:
        return None
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return None


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_equals_transformers(layout_folder, layout):
    folder = layout_folder(layout)
    ref, tok = helpers.reference_tokenizer(folder), Tokenizer.from_folder(folder)
    assert tok.tokenizer_class + "Fast" == type(ref).__name__
    assert tok.model_input_names == tuple(ref.model_input_names)
    assert tok.special_tokens == {k: v for k, v in ref.special_tokens_map.items() if k != "additional_special_tokens"}
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.unk_token_id) == (
        ref.cls_token_id,
        ref.sep_token_id,
        ref.pad_token_id,
        ref.unk_token_id,
    )
    assert (tok.model_max_length, tok.padding_side) == (ref.model_max_length, ref.padding_side)
    assert helpers.added_tokens(tok.backend) == helpers.added_tokens(ref.backend_tokenizer)
    compared = windows = 0
    cases = CASES[::4] if layout in VARIANTS else CASES
    for question, context, max_length, stride, padding in cases:
        expected = _refuses(ref, question, context, max_length, stride, padding)
        if expected is None:
            with pytest.raises(ValueError):
                tok.encode_pair(question, context, max_length, stride, padding)
            continue
        got = helpers.npbert_windows(tok, question, context, max_length, stride, padding)
        assert got == expected, (layout, question, context[:80], max_length, stride, padding)
        compared += 1
        windows += len(expected)
    assert compared >= 0.85 * len(cases)  # only very short windows with long questions are refused
    assert windows > compared + len(cases) // 5  # the short settings and long contexts made overflow windows


@pytest.mark.parametrize(
    "layout",
    [
        "bert-cased/vocab.txt",
        "electra-uncased/vocab.txt",
        "roberta/vocab.json",
        "xlm-roberta-bpe/sentencepiece.bpe.model",
        "albert/spiece.model",
        "deberta-v3/spm.model",
    ],
)
def test_p_mask_is_the_pipelines(layout_folder, layout):
    """QuestionAnsweringPipeline.preprocess: p_mask 1 where the sequence id is not 1, then 0 wherever the id
    is cls_token_id (a literal CLS token in the context too); type ids 0/1 only where the family has them."""
    folder = layout_folder(layout)
    ref, tok = helpers.reference_tokenizer(folder), Tokenizer.from_folder(folder)
    context = "The capital is Paris. " + helpers.UNICODE_CONTEXTS[10 if "roberta" in layout else 9]
    (window,) = tok.encode_pair("Where?", context, 128, 32, "max_length")
    (expected,) = helpers.reference_windows(ref, "Where?", context, 128, 32, "max_length")
    assert window.p_mask.tolist() == expected["p_mask"]
    assert window.token_type_ids.tolist() == expected["token_type_ids"]
    special = np.array([s is None for s in window.sequence_ids])
    assert not window.p_mask[0] and window.p_mask[special & (window.input_ids == tok.sep_token_id)].all()
    literal = ~special & (window.input_ids == tok.cls_token_id)  # the literal CLS token in the context
    assert literal.any() and not window.p_mask[literal].any()
    two_types = "token_type_ids" in tok.model_input_names
    assert set(window.token_type_ids[window.attention_mask == 1].tolist()) == ({0, 1} if two_types else {0})
    assert window.token_type_ids[window.attention_mask == 0].tolist() == [0] * int((window.attention_mask == 0).sum())


def _copy(layout_folder, layout, tmp_path, drop=(), **config):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(layout_folder(layout), folder)
    for name in drop:
        (folder / name).unlink()
    if config:
        helpers.edit_config(folder, **config)
    return folder


def test_class_from_model_type_argument_and_config(layout_folder, tmp_path):
    """tokenizer_class wins; else the model_type argument (the lead passes config.json's); else config.json."""
    folder = _copy(layout_folder, "roberta/vocab.json", tmp_path, drop=("config.json",))
    d = json.loads((folder / "tokenizer_config.json").read_text())
    del d["tokenizer_class"]
    (folder / "tokenizer_config.json").write_text(json.dumps(d))
    tok = Tokenizer.from_folder(folder, model_type="roberta")
    assert tok.tokenizer_class == "RobertaTokenizer" and tok.encode("Hi") == [
        0,
        *tok.backend.encode("Hi", add_special_tokens=False).ids,
        2,
    ]
    assert Tokenizer.from_folder(folder).tokenizer_class == "RobertaTokenizer"  # from the files alone
    with pytest.raises(ValueError, match="model_type 'gpt2' has no supported tokenizer; supported: distilbert"):
        Tokenizer.from_folder(folder, model_type="gpt2")
    helpers.edit_config(folder, tokenizer_class="BertTokenizerFast")  # wins over model_type, needs vocab.txt
    with pytest.raises(OSError, match="no tokenizer.json or vocab.txt for BertTokenizerFast"):
        Tokenizer.from_folder(folder, model_type="roberta")
    (folder / "tokenizer.json").write_text("{}")
    helpers.edit_config(folder, from_slow=True)  # convert the vocabulary files, which are not there
    with pytest.raises(OSError, match="from_slow in tokenizer_config.json, but no vocab.txt for BertTokenizerFast"):
        Tokenizer.from_folder(folder)


def test_null_model_max_length_is_no_limit_as_in_transformers(layout_folder, tmp_path):
    folder = _copy(layout_folder, "bert-cased/vocab.txt", tmp_path, model_max_length=None)
    assert Tokenizer.from_folder(folder).model_max_length == VERY_LARGE_INTEGER
    assert helpers.reference_tokenizer(folder).model_max_length == VERY_LARGE_INTEGER


def test_model_input_names_from_config(layout_folder, tmp_path):
    folder = _copy(
        layout_folder,
        "roberta/vocab.json",
        tmp_path,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    assert Tokenizer.from_folder(folder).model_input_names == tuple(
        helpers.reference_tokenizer(folder).model_input_names
    )


# --- broken tokenizer files: one line naming the file and the key --------------------------------------

BROKEN = [  # (id, layout, change, message pattern)
    (
        "max-length-text",
        "bert-cased/vocab.txt",
        {"config": {"model_max_length": "abc"}},
        r"tokenizer_config.json: model_max_length must be a positive integer or null, found 'abc'",
    ),
    (
        "max-length-negative",
        "bert-cased/vocab.txt",
        {"config": {"model_max_length": -5}},
        r"tokenizer_config.json: model_max_length .* found -5",
    ),
    (
        "max-length-zero",
        "bert-cased/vocab.txt",
        {"config": {"model_max_length": 0}},
        r"tokenizer_config.json: model_max_length .* found 0",
    ),
    ("cls-number", "bert-cased/vocab.txt", {"config": {"cls_token": 5}}, r"tokenizer_config.json: cls_token must be"),
    (
        "cls-empty-object",
        "bert-cased/vocab.txt",
        {"config": {"cls_token": {}}},
        r"tokenizer_config.json: cls_token must be a token string or an AddedToken object",
    ),
    (
        "cls-object-json",
        "bert-cased/tokenizer.json",
        {"config": {"cls_token": {"lstrip": True}}},
        r"tokenizer_config.json: cls_token must be",
    ),
    (
        "special-map-cls-list",
        "bert-cased/vocab.txt",
        {"write": {"special_tokens_map.json": b'{"cls_token": ["[CLS]"]}'}},
        r"special_tokens_map.json: cls_token must be a token string",
    ),
    (
        "lowercase-yes",
        "bert-uncased/vocab.txt",
        {"config": {"do_lower_case": "yes"}},
        r"tokenizer_config.json: do_lower_case must be true or false, found 'yes'",
    ),
    (
        "strip-accents-text",
        "bert-uncased/tokenizer.json",
        {"config": {"strip_accents": "no"}},
        r"tokenizer_config.json: strip_accents must be true or false or null",
    ),
    (
        "prefix-space-number",
        "roberta/vocab.json",
        {"config": {"add_prefix_space": 1}},
        r"tokenizer_config.json: add_prefix_space must be true or false",
    ),
    (
        "padding-left",
        "bert-cased/vocab.txt",
        {"config": {"padding_side": "left"}},
        r"padding_side 'left' is not supported",
    ),
    (
        "padding-sideways",
        "bert-cased/vocab.txt",
        {"config": {"padding_side": "up"}},
        r"tokenizer_config.json: padding_side must be one of 'right', 'left', found 'up'",
    ),
    (
        "input-names",
        "roberta/vocab.json",
        {"config": {"model_input_names": "input_ids"}},
        r"tokenizer_config.json: model_input_names must be a list",
    ),
    (
        "added-tokens-decoder",
        "roberta/tokenizer.json",
        {"config": {"added_tokens_decoder": {"0": "<s>"}}},
        r"tokenizer_config.json: added_tokens_decoder entry '0' must map",
    ),
    (
        "class-unknown",
        "bert-cased/vocab.txt",
        {"config": {"tokenizer_class": "GPT2Tokenizer"}},
        r"tokenizer_class 'GPT2Tokenizer' is not supported; supported: DistilBertTokenizerFast",
    ),
    (
        "config-not-json",
        "bert-cased/vocab.txt",
        {"write": {"tokenizer_config.json": b"{oops"}},
        r"tokenizer_config.json: not valid JSON",
    ),
    (
        "vocab-txt-latin1",
        "bert-cased/vocab.txt",
        {"write": {"vocab.txt": "[PAD]\n[UNK]\n[CLS]\n[SEP]\ncaf\xe9\n".encode("latin-1")}},
        r"vocab.txt: not UTF-8 text",
    ),
    # (a vocabulary without [CLS] gets it as an added token, as in transformers: layout bert-no-cls-sep)
    (
        "vocab-txt-no-unk",
        "bert-cased/vocab.txt",
        {"write": {"vocab.txt": b"[PAD]\n[CLS]\n[SEP]\nword\n"}},
        r"vocab.txt: the vocabulary has no \[UNK\] token",
    ),
    (
        "added-tokens-json-text-id",
        "bert-added-tokens/vocab.txt",
        {"write": {"added_tokens.json": b'{"<e1>": "5"}'}},
        r"added_tokens.json: expected a JSON object mapping token strings to integer ids, found '<e1>': '5'",
    ),
    (
        "added-tokens-json-list",
        "bert-added-tokens/vocab.txt",
        {"write": {"added_tokens.json": b'["<e1>"]'}},
        r"added_tokens.json: expected a JSON object",
    ),
    (
        "tokenizer-json-garbage",
        "bert-cased/tokenizer.json",
        {"write": {"tokenizer.json": b"\x00\xffgarbage"}},
        r"tokenizer.json: cannot be loaded",
    ),
    (
        "tokenizer-json-truncated",
        "roberta/tokenizer.json",
        {"truncate": "tokenizer.json"},
        r"tokenizer.json: cannot be loaded",
    ),
    (
        "tokenizer-json-empty",
        "bert-cased/tokenizer.json",
        {"write": {"tokenizer.json": b""}},
        r"tokenizer.json: cannot be loaded",
    ),
    (
        "tokenizer-json-wrong-object",
        "bert-cased/tokenizer.json",
        {"write": {"tokenizer.json": b'{"model": 3}'}},
        r"tokenizer.json: cannot be loaded",
    ),
    (
        "vocab-json-garbage",
        "roberta/vocab.json",
        {"write": {"vocab.json": b"{not json"}},
        r"vocab.json: not valid JSON",
    ),
    (
        "vocab-json-list",
        "roberta/vocab.json",
        {"write": {"vocab.json": b'["<s>", "</s>"]'}},
        r"vocab.json: expected a JSON object mapping tokens to integer ids",
    ),
    (
        "vocab-json-latin1",
        "roberta/vocab.json",
        {"write": {"vocab.json": '{"caf\xe9": 0}'.encode("latin-1")}},
        r"vocab.json: not UTF-8 text",
    ),
    (
        "merges-three-parts",
        "roberta/vocab.json",
        {"append": {"merges.txt": "a b c\n"}},
        r"merges.txt: a merge must be two tokens separated by a space, found 'a b c'",
    ),
    (
        "merges-unknown-token",
        "roberta/vocab.json",
        {"append": {"merges.txt": "qqqqzz xxxxyy\n"}},
        r"merges.txt: does not fit vocab.json",
    ),
    (
        "spiece-garbage",
        "albert/spiece.model",
        {"write": {"spiece.model": b"\x00\x01 definitely not a model"}},
        r"spiece.model: not a SentencePiece model",
    ),
    (
        "spiece-empty",
        "albert/spiece.model",
        {"write": {"spiece.model": b""}},
        r"spiece.model: not a SentencePiece model",
    ),
]


@pytest.mark.parametrize("layout, change, message", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_tokenizer_files_fail_in_one_line(layout_folder, tmp_path, layout, change, message):
    folder = _copy(layout_folder, layout, tmp_path, **change.get("config", {}))
    for name, data in change.get("write", {}).items():
        (folder / name).write_bytes(data)
    for name, text in change.get("append", {}).items():
        with open(folder / name, "a", encoding="utf-8") as f:
            f.write(text)
    if "truncate" in change:
        path = folder / change["truncate"]
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=message) as error:
        Tokenizer.from_folder(folder)
    assert "\n" not in str(error.value)


def test_without_sentencepiece_a_one_line_error_names_the_extra(layout_folder, tmp_path, monkeypatch):
    spm_folder = layout_folder("albert/spiece.model")
    json_folder = layout_folder("albert/tokenizer.json")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import sentencepiece now raises ImportError
    with pytest.raises(
        ImportError, match=r"spiece.model: .*the sentencepiece extra \(pip install -e '\.\[sentencepiece\]'"
    ) as error:
        Tokenizer.from_folder(spm_folder)
    assert "\n" not in str(error.value)
    assert Tokenizer.from_folder(json_folder).encode("Hello")  # tokenizer.json needs no sentencepiece


# --- thread safety --------------------------------------------------------------------------------------

THREADS = 8


def test_one_tokenizer_from_many_threads_at_once(layout_folder):
    """Eight threads encode through one Tokenizer at the same moment (a Barrier releases them together), each
    with its own window and padding settings: no error, and each gets what a serial call gets."""
    folder = layout_folder("bert-cased/vocab.txt")
    pairs = helpers.squad_pairs(24, seed=2)
    questions, contexts = [q for q, _ in pairs], [c for _, c in pairs]
    settings = [
        (384, 128, "do_not_pad"),
        (64, 16, "max_length"),
        (48, 8, "longest"),
        (96, 32, "do_not_pad"),
        (64, 16, "do_not_pad"),
        (128, 0, "max_length"),
        (40, 4, "longest"),
        (200, 50, "do_not_pad"),
    ]

    def result(tok, max_length, stride, padding):
        windows = tok.encode_pairs(questions, contexts, max_length, stride, padding)
        return (
            [
                [(w.input_ids.tolist(), w.token_type_ids.tolist(), w.offsets.tolist(), w.p_mask.tolist()) for w in ws]
                for ws in windows
            ],
            tok.tokenize(contexts[0]),
            tok.encode(questions[0], contexts[0]),
        )

    serial = Tokenizer.from_folder(folder)
    expected = [result(serial, *s) for s in settings]
    shared = Tokenizer.from_folder(folder)  # fresh: the threads also race to make the configured copies
    barrier = threading.Barrier(THREADS)
    got, errors = [None] * THREADS, []

    def work(i):
        try:
            barrier.wait()
            for _ in range(3):
                got[i] = result(shared, *settings[i])
                assert got[i] == expected[i]
        except BaseException as e:  # reported below; a thread's exception is otherwise only printed
            errors.append(f"thread {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert got == expected


# --- every tokenizer_config.json option the slow tokenizers honour, on each family's vocabulary-only layout ---

from hypothesis import given, settings, strategies as st  # noqa: E402

_FLAG = st.booleans()
OPTIONS = {  # base layout -> the options its slow tokenizer reads (transformers 4.57.6), drawn together
    "bert-uncased/vocab.txt": dict(
        do_lower_case=_FLAG,
        do_basic_tokenize=_FLAG,
        tokenize_chinese_chars=_FLAG,
        strip_accents=st.sampled_from([None, True, False]),
        split_special_tokens=_FLAG,
        never_split=st.sampled_from([None, ["HUGGINGFACE", "[SEP]"]]),
        tokenizer_class=st.sampled_from(["BertTokenizer", "DistilBertTokenizer", "ElectraTokenizerFast"]),
    ),
    "bert-added-tokens/vocab.txt": dict(do_lower_case=_FLAG, strip_accents=st.sampled_from([None, True, False])),
    "roberta/vocab.json": dict(add_prefix_space=_FLAG, trim_offsets=_FLAG, split_special_tokens=_FLAG),
    "xlm-roberta-bpe/sentencepiece.bpe.model": dict(split_special_tokens=_FLAG, add_prefix_space=_FLAG),
    "albert/spiece.model": dict(
        do_lower_case=_FLAG, keep_accents=_FLAG, remove_space=_FLAG, split_special_tokens=_FLAG, add_prefix_space=_FLAG
    ),
    "deberta-v3/spm.model": dict(do_lower_case=_FLAG, split_by_punct=_FLAG, split_special_tokens=_FLAG),
    "deberta-v3-fast-saved/spm.model": dict(do_lower_case=_FLAG, split_by_punct=_FLAG, add_prefix_space=_FLAG),
    # beside a tokenizer.json: from_slow makes transformers convert the vocabulary files instead
    "bert-uncased/tokenizer.json": dict(
        from_slow=_FLAG, do_lower_case=_FLAG, do_basic_tokenize=_FLAG, tokenize_chinese_chars=_FLAG
    ),
    "roberta/tokenizer.json": dict(from_slow=_FLAG, add_prefix_space=_FLAG, trim_offsets=_FLAG),
    "albert/tokenizer.json": dict(from_slow=_FLAG, do_lower_case=_FLAG, keep_accents=_FLAG),
    "deberta-v3/tokenizer.json": dict(from_slow=_FLAG, do_lower_case=_FLAG, split_by_punct=_FLAG),
}
# Text built from pieces that the options treat differently: case, accents, CJK, punctuation, runs of spaces,
# literal special and added tokens, quotes ALBERT rewrites.
_PIECES = st.sampled_from(
    [
        "HUGGINGFACE",
        "Hugging",
        "face",
        "Café",
        "naïve",
        "e\u0301",
        "東京",
        "北京",
        "日本",
        "[SEP]",
        "[CLS]",
        "[MASK]",
        "<e1>",
        "</e1>",
        "<s>",
        "<mask>",
        "don't",
        "U.S.A.",
        "3,5",
        "``q''",
        "(x)",
        "!",
        "-",
        "😀",
        "Seattle",
        "John",
        "\t",
        "  ",
        "\n",
        "ß",
        "İ",
    ]
)
_ANY = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=6)
_TEXT = st.lists(st.one_of(_PIECES, _ANY), min_size=1, max_size=12).map(
    lambda parts: " ".join(parts) if len(parts) % 2 else "".join(parts)
)


@pytest.mark.parametrize("base", list(OPTIONS))
def test_config_options_as_transformers(layout_folder, tmp_path_factory, base):
    """Each drawn combination of options written into tokenizer_config.json: npbert's windows (ids, type ids,
    offsets, overflow windows) equal transformers' on drawn text (pieces the options treat differently mixed
    with any characters), and where transformers refuses the window settings, npbert does too."""
    folder = layout_folder(base)

    @settings(max_examples=20)
    @given(options=st.fixed_dictionaries(OPTIONS[base]), question=_TEXT, context=_TEXT)
    def check(options, question, context):
        import shutil

        copy = tmp_path_factory.mktemp("options")
        shutil.rmtree(copy)
        shutil.copytree(folder, copy)
        if not (copy / "tokenizer_config.json").is_file():
            (copy / "tokenizer_config.json").write_text("{}")
        helpers.edit_config(copy, **{k: v for k, v in options.items() if v is not None})
        ref, tok = helpers.reference_tokenizer(copy), Tokenizer.from_folder(copy)
        assert helpers.added_tokens(tok.backend) == helpers.added_tokens(ref.backend_tokenizer)
        for q, c in ((question, context), (context, question), ("Who lives in Seattle?", context)):
            for max_length, stride in ((384, 128), (16, 2)):  # (16, 2): overflow windows, or a refusal
                expected = _refuses(ref, q, c, max_length, stride, "do_not_pad")
                if expected is None:
                    with pytest.raises(ValueError):
                        tok.encode_pair(q, c, max_length, stride)
                else:
                    assert helpers.npbert_windows(tok, q, c, max_length, stride) == expected, (options, q, c)

    check()
