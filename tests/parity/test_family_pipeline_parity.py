"""npbert.pipeline vs transformers 4.57.6 `pipeline("question-answering")` for every family, each with the
tokenizer layout its hub checkpoints ship: BERT cased and uncased (MiniLM) and ELECTRA from vocab.txt,
RoBERTa from vocab.json + merges.txt (and from a tokenizer.json transformers saved), XLM-R, ALBERT and
DeBERTa-v3 from SentencePiece models trained in the test (also without [CLS]/[SEP] pieces, the special tokens
added as transformers adds them), BERT with added_tokens.json. Random weights saved by transformers' `save_pretrained`,
sized to the tokenizer's vocabulary and padding id.

Every answer, start and end identical; scores within 1e-4 relative: multi-window contexts, unicode, the
parameter grid, handle_impossible_answer, batches of questions and batch_size. The checks are the ones
tests/parity/test_pipeline_parity.py makes for DistilBERT (its `assert_parity`)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

import npbert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tokenizer_helpers as th  # noqa: E402
from parity_helpers import family_checkpoint  # noqa: E402
from test_pipeline_parity import LONG, QUESTIONS, SHORT, UNICODE, assert_parity, reference  # noqa: E402

transformers = pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TINY = dict(
    hidden_size=32,
    num_attention_heads=4,
    intermediate_size=48,
    num_hidden_layers=2,
    max_position_embeddings=512,
    initializer_range=0.2,
)
# entity markers as relation-extraction fine-tunes add them (added_tokens.json): whole tokens where declared
ENTITIES = "<e1>John</e1> has lived in <e2>Seattle</e2> since 2010, and <e1>Mary</e1> in <e2>Boston</e2>."
# deberta-v3-base's attention settings (a SQuAD 2.0 model: handle_impossible_answer is what it is run with)
DEBERTA_V3 = {
    "type_vocab_size": 0,
    "relative_attention": True,
    "position_buckets": 256,
    "pos_att_type": ["p2c", "c2p"],
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "position_biased_input": False,
    "layer_norm_eps": 1e-7,
}
# family -> (tokenizer folder maker, model config beyond TINY)
LAYOUTS = {
    "bert-cased-vocab.txt": ("bert", lambda d: th.wordpiece_folder(d, lowercase=False), {}),
    "bert-uncased-vocab.txt": ("bert", lambda d: th.wordpiece_folder(d, lowercase=True), {"hidden_act": "gelu"}),
    "electra-vocab.txt": (
        "electra",
        lambda d: th.wordpiece_folder(d, lowercase=True, model_type="electra"),
        {"embedding_size": 16},
    ),
    "roberta-vocab.json": ("roberta", lambda d: th.roberta_folder(d), {"type_vocab_size": 1, "layer_norm_eps": 1e-5}),
    "roberta-tokenizer.json": (
        "roberta",
        lambda d: th.with_tokenizer_json(th.roberta_folder(d.with_name("src")), d),
        {"type_vocab_size": 1, "layer_norm_eps": 1e-5},
    ),
    "xlm-roberta-sentencepiece": (
        "xlm-roberta",
        lambda d: th.sentencepiece_folder(d, "xlmr"),
        {"type_vocab_size": 1, "layer_norm_eps": 1e-5},
    ),
    "albert-sentencepiece": (
        "albert",
        lambda d: th.sentencepiece_folder(d, "albert"),
        {"embedding_size": 16, "hidden_act": "gelu_new"},
    ),
    "deberta-v3-sentencepiece": ("deberta-v2", lambda d: th.sentencepiece_folder(d, "deberta"), DEBERTA_V3),
    # issue 27: what transformers loads and npbert refused: DeBERTa-v3 on a sentencepiece model without [CLS]/[SEP]
    # (DebertaV2TokenizerFast(vocab_file=...) declares them as added tokens), an ALBERT folder with only
    # spiece.model, and a BERT vocab.txt with added_tokens.json entity markers
    "deberta-v3-added-specials": (
        "deberta-v2",
        lambda d: th.saved_by_transformers(
            d,
            "DebertaV2TokenizerFast",
            th.plain_sentencepiece(d.with_name("plain.model")),
            "deberta-v2",
            keep=("spm.model", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"),
        ),
        DEBERTA_V3,
    ),
    "albert-spiece-only": (
        "albert",
        lambda d: th.saved_by_transformers(
            d, "AlbertTokenizer", th.plain_sentencepiece(d.with_name("plain.model")), "albert", keep=("spiece.model",)
        ),
        {"embedding_size": 16, "hidden_act": "gelu_new"},
    ),
    "bert-added-tokens-json": (
        "bert",
        lambda d: th.with_added_tokens_json(
            th.wordpiece_folder(d.with_name("src"), lowercase=True), d, ["<e1>", "</e1>"]
        ),
        {},
    ),
}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def family_pair(request, tmp_path_factory):
    pytest.importorskip("sentencepiece", reason="the sentencepiece extra is not installed")
    model_type, make_tokenizer, extra = LAYOUTS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    folder = make_tokenizer(root / "qa")
    tok = npbert.Tokenizer.from_folder(folder)
    positions = TINY["max_position_embeddings"] + (tok.pad_token_id + 1 if model_type.endswith("roberta") else 0)
    family_checkpoint(
        folder,
        model_type,
        seed=len(request.param),
        **{
            **TINY,
            **extra,
            "max_position_embeddings": positions,
            "vocab_size": tok.backend.get_vocab_size(),
            "pad_token_id": tok.pad_token_id,
        },
    )
    mine = npbert.pipeline("question-answering", model=folder)
    assert mine.model.config.model_type == model_type
    return mine, reference(folder)


def test_questions_contexts_and_windows(family_pair):
    mine, ref = family_pair
    questions = ["Where does John live?", "Which river was renamed in 1830?", "Who lives there?"] + QUESTIONS[
        : len(UNICODE)
    ]
    contexts = [SHORT, LONG[:900], ENTITIES] + UNICODE
    assert len(mine.tokenizer.encode_pair(questions[1], contexts[1], 64, 16)) >= 3
    for kwargs in (
        dict(top_k=3),
        dict(top_k=2, batch_size=4, max_seq_len=64, doc_stride=16),
        dict(handle_impossible_answer=True, top_k=4, max_seq_len=48, doc_stride=8),
        dict(
            align_to_words=False,
            max_answer_len=4,
            top_k=5,
            padding="max_length",
            max_seq_len=96,
            doc_stride=32,
            batch_size=3,
        ),
    ):
        assert_parity(
            mine(question=questions, context=contexts, **kwargs),
            ref(question=questions, context=contexts, **kwargs),
            f"{mine.model.config.model_type} {kwargs}",
        )


@pytest.mark.parametrize("context", ["a", "  padded  ", "x" * 300, "Seattle", UNICODE[2]])
def test_edge_contexts(family_pair, context):
    mine, ref = family_pair
    for kwargs in (dict(top_k=10), dict(top_k=3, align_to_words=False, handle_impossible_answer=True)):
        assert_parity(
            mine(question="What is it?", context=context, **kwargs),
            ref(question="What is it?", context=context, **kwargs),
            str(kwargs),
        )


def test_token_types_reach_the_model_as_transformers_passes_them(family_pair):
    mine, ref = family_pair
    passes = "token_type_ids" in ref.tokenizer.model_input_names
    assert ("token_type_ids" in mine.tokenizer.model_input_names) == passes
    # ALBERT and DeBERTa-v3 take token types their table does not distinguish (1 row; DeBERTa: none, ignored)
    assert (mine.model.config.type_vocab_size >= 2) == passes or mine.model.config.model_type in (
        "albert",
        "deberta-v2",
    )


def test_an_unsupported_family_is_refused_in_one_line(tmp_path):
    folder = Path(shutil.copytree(Path(__file__).parents[1] / "fixtures" / "reference" / "bert", tmp_path / "m"))
    (folder / "config.json").write_text((folder / "config.json").read_text().replace('"bert"', '"xlnet"'))
    with pytest.raises(ValueError, match="model_type 'xlnet' is not supported; npbert runs distilbert, bert"):
        npbert.pipeline("question-answering", model=folder)
