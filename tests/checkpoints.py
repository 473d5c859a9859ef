"""Test checkpoints, made without torch: random DistilBERT question-answering folders laid out exactly as
transformers' `save_pretrained` writes them (config.json, model.safetensors) plus the tokenizer files
the real `distilbert/distilbert-base-cased-distilled-squad` repository carries.

The tokenizer is built here directly with the `tokenizers` library (not with npbert's code), mirroring
the real checkpoint's tokenizer.json: cased BERT WordPiece, `[CLS] A [SEP] B [SEP]`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

# ../shared beside the checkout; NPBERT_SHARED_DIR overrides it (point it at an empty folder to run the
# suite as a user's fresh clone would, without the shared data).
SHARED = Path(os.environ.get("NPBERT_SHARED_DIR") or Path(__file__).resolve().parents[1].parent / "shared")
SHARED_VOCAB = SHARED / "data" / "bert-base-cased-vocab.txt"
SHARED_SQUAD = SHARED / "data" / "squad-v1.1-dev.json"

FULL_SIZE = dict(vocab_size=28996, dim=768, n_layers=6, n_heads=12, hidden_dim=3072, max_position_embeddings=512)
TINY = dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=512)

# A question whose context makes several windows at SMALL_WINDOWS (the window tests of POST /v1/explain and of
# the attributions), and those window settings.
LONG_CONTEXT = " ".join(
    f"In round {i} the home team played well and the visitors scored {i} points." for i in range(12)
)
LONG = {
    "question": "Who won the game in the end?",
    "context": LONG_CONTEXT + " The visitors won the game by two points.",
}
SMALL_WINDOWS = {"max_seq_len": 48, "doc_stride": 16}


def context_of_windows(tokenizer, question: str, windows, settings=SMALL_WINDOWS, text=LONG_CONTEXT) -> str:
    """The longest run of `text`'s first sentences that makes `windows` windows (a count, or a range of counts)
    with `question` at `settings`: a window test's context, with such a count whichever vocabulary the test
    checkpoint has (the real one from ../shared, or the generated one, which cuts more words into pieces)."""
    allowed = range(windows, windows + 1) if isinstance(windows, int) else windows
    sentences, found = [s.rstrip(".") + "." for s in text.split(". ")], None
    for k in range(1, len(sentences) + 1):
        context = " ".join(sentences[:k])
        n = len(tokenizer.encode_pair(question, context, settings["max_seq_len"], settings["doc_stride"]))
        if n in allowed:
            found = context
        elif n > max(allowed):
            break
    if found is None:
        raise AssertionError(f"no prefix of the text makes exactly {windows} windows with {question!r}")
    return found


SPECIALS = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def generated_vocab(size: int = 1000) -> list[str]:
    """A small cased WordPiece vocabulary: specials at the real ids (PAD 0, UNK 100, CLS 101, SEP 102),
    ASCII characters, continuation pieces, and common words; used when ../shared is absent."""
    chars = [chr(c) for c in range(33, 127)]
    words = (
        "the The a an of and to in is was for on as with by at from his her it be are name John live "
        "Seattle What's my I who where when which city river year first new one two three Paris Rome "
        "question answer context model token word play played playing team game won"
    ).split()
    vocab = SPECIALS + chars + ["##" + c for c in chars if c.isalnum()]
    for w in words:
        if w not in vocab:
            vocab.append(w)
    for piece in ("##s", "##ing", "##ed", "##er", "##ly", "##ion", "##al", "##e", "##en", "##ation"):
        if piece not in vocab:
            vocab.append(piece)
    while len(vocab) < size:
        vocab.append(f"[unused{len(vocab)}]")
    return vocab


def real_or_generated_vocab() -> list[str]:
    if SHARED_VOCAB.is_file():
        return SHARED_VOCAB.read_text(encoding="utf-8").splitlines()
    return generated_vocab()


def write_tokenizer(folder: Path, vocab: list[str], lowercase: bool = False, model_max_length: int = 512) -> None:
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    ids = {tok: i for i, tok in enumerate(vocab)}
    tok = Tokenizer(WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = ids["[CLS]"], ids["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        tok.add_special_tokens([special])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "do_lower_case": lowercase,
                "model_max_length": model_max_length,
                "tokenizer_class": "DistilBertTokenizer",
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "unk_token": "[UNK]",
                "mask_token": "[MASK]",
            },
            indent=2,
        )
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "unk_token": "[UNK]",
                "mask_token": "[MASK]",
            },
            indent=2,
        )
    )


def config_dict(**kw) -> dict:
    """A config.json as transformers 4.57.6 writes it for DistilBertForQuestionAnswering."""
    d = dict(
        activation="gelu",
        architectures=["DistilBertForQuestionAnswering"],
        attention_dropout=0.1,
        dim=768,
        dropout=0.1,
        hidden_dim=3072,
        initializer_range=0.02,
        max_position_embeddings=512,
        model_type="distilbert",
        n_heads=12,
        n_layers=6,
        pad_token_id=0,
        qa_dropout=0.1,
        seq_classif_dropout=0.2,
        sinusoidal_pos_embds=False,
        tie_weights_=True,
        torch_dtype="float32",
        transformers_version="4.57.6",
        vocab_size=28996,
    )
    d.update(kw)
    return d


def random_tensors(cfg: dict, seed: int = 0, qa_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Weights drawn like transformers' `_init_weights` (normal 0.02, LayerNorm 1/0, zero biases), except
    that biases and LayerNorm parameters are randomised too so the tests see every term."""
    from npbert.config import Config
    from npbert.weights import expected_shapes, sinusoidal_table

    rng = np.random.default_rng(seed)
    config = Config.from_dict(cfg)
    out = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("LayerNorm.weight") or name.endswith("layer_norm.weight"):
            t = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            t = 0.02 * rng.standard_normal(shape)
        else:
            t = 0.02 * rng.standard_normal(shape)
        out[name] = t.astype(np.float32)
    if config.sinusoidal_pos_embds:
        out["distilbert.embeddings.position_embeddings.weight"] = sinusoidal_table(
            config.max_position_embeddings, config.dim
        ).astype(np.float32)
    out["distilbert.embeddings.word_embeddings.weight"][config.pad_token_id] = 0.0
    out["qa_outputs.weight"] *= np.float32(qa_scale)
    return out


def write_checkpoint(
    folder: Path,
    seed: int = 0,
    qa_scale: float = 1.0,
    vocab: list[str] | None = None,
    tokenizer: bool = True,
    **config_kw,
) -> Path:
    """A complete checkpoint folder with random weights. Returns the folder."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = vocab if vocab is not None else real_or_generated_vocab()
    cfg = config_dict(**{"vocab_size": len(vocab), **config_kw})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    save_file(random_tensors(cfg, seed, qa_scale), str(folder / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer:
        write_tokenizer(folder, vocab)
    return folder
