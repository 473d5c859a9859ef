"""Question/context tokenization, equal to transformers 4.57.6 `DistilBertTokenizerFast`.

Follows transformers 4.57.6 `models/distilbert/tokenization_distilbert_fast.py` and
`tokenization_utils_fast.py` (loading, the normalizer override, special tokens, truncation and padding
settings) and `convert_slow_tokenizer.py` `BertConverter` (the vocab.txt fallback). The `tokenizers`
library does the actual work, configured exactly as transformers configures it, so ids, offsets and
overflow windows are the same by construction (and checked by tests/test_tokenizer.py).

API
---
    tok = Tokenizer.from_folder(folder)            # tokenizer.json, else vocab.txt + tokenizer_config.json
    tok = Tokenizer.from_pretrained(path_or_repo_id, revision=None)   # via npbert.hub
    tok.tokenize("Where is Seattle?")              # ['Where', 'is', 'Seattle', '?']
    tok.encode("Where is Seattle?")                # [101, ..., 102]  ([CLS] text [SEP])
    windows = tok.encode_pair(question, context, max_length=384, stride=128, padding="do_not_pad")
    w = windows[0]
    w.input_ids       # [S] int64: [CLS] question [SEP] context-window [SEP] (+ [PAD]s if padded)
    w.attention_mask  # [S] int64: 1 token, 0 padding
    w.offsets         # [S, 2] int64: character span of each token in its own text ((0, 0) for specials)
    w.sequence_ids    # tuple [S]: 0 question, 1 context, None special/padding
    w.p_mask          # [S] bool: True where a token cannot be part of an answer (all but context and [CLS])
    w.encoding        # the tokenizers.Encoding (token_to_word, word_to_chars, ...)

`encode_pair` is the pipeline's encoding: question first, `truncation="only_second"` so only the
context is cut, and when it does not fit, overflow windows where consecutive windows share `stride`
context tokens. A question too long to leave room for context raises ValueError (transformers raises the
tokenizers library's truncation error in the same cases).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# transformers' stand-in for "no limit" when tokenizer_config.json gives no model_max_length.
VERY_LARGE_INTEGER = int(1e30)
SPECIAL_TOKEN_KEYS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
PADDING = ("do_not_pad", "longest", "max_length")


@dataclass(frozen=True)
class Window:
    """One model input: the question and one window of the context."""

    input_ids: np.ndarray  # [S] int64
    attention_mask: np.ndarray  # [S] int64
    offsets: np.ndarray  # [S, 2] int64
    sequence_ids: tuple  # [S] of 0, 1 or None
    p_mask: np.ndarray  # [S] bool
    encoding: object  # tokenizers.Encoding

    def __len__(self) -> int:
        return len(self.input_ids)


def _special_tokens(config: dict) -> dict[str, str]:
    # tokenizer_config.json may store a special token as a plain string or as an AddedToken dict.
    out = {}
    for key, default in zip(SPECIAL_TOKEN_KEYS, ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]")):
        value = config.get(key, default)
        out[key] = value["content"] if isinstance(value, dict) else value
    return out


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return d


def _bert_backend(vocab_file: Path, lowercase: bool, strip_accents, chinese: bool, unk: str, cls: str, sep: str):
    """The backend transformers' BertConverter builds from vocab.txt (convert_slow_tokenizer.py)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    # BertTokenizer.load_vocab: readlines() (universal newlines), ids in file order, a repeated line's
    # last id wins.
    with open(vocab_file, encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(f.readlines())}
    for token in (unk, cls, sep):
        if token not in vocab:
            raise ValueError(f"{vocab_file}: the vocabulary has no {token} token")
    backend = Tokenizer(WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=chinese,
                                                    strip_accents=strip_accents, lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _apply_normalizer_flags(backend, lowercase: bool, strip_accents, chinese: bool) -> None:
    """DistilBertTokenizerFast.__init__: tokenizer_config.json's flags win over tokenizer.json's normalizer."""
    from tokenizers import normalizers

    if backend.normalizer is None:
        return
    state = json.loads(backend.normalizer.__getstate__())
    if (state.get("lowercase", lowercase) != lowercase or state.get("strip_accents", strip_accents) != strip_accents
            or state.get("handle_chinese_chars", chinese) != chinese):
        cls = getattr(normalizers, state.pop("type"))
        state.update(lowercase=lowercase, strip_accents=strip_accents, handle_chinese_chars=chinese)
        backend.normalizer = cls(**state)


class Tokenizer:
    """A `tokenizers.Tokenizer` plus what transformers reads from tokenizer_config.json."""

    def __init__(self, backend, special_tokens: dict[str, str], model_max_length: int = VERY_LARGE_INTEGER,
                 do_lower_case: bool = True, padding_side: str = "right", source: str = ""):
        if padding_side != "right":
            raise ValueError(f"{source}: padding_side {padding_side!r} is not supported (question-first "
                             "encoding needs 'right')")
        self.backend = backend
        self.special_tokens = special_tokens
        self.model_max_length = model_max_length
        self.do_lower_case = do_lower_case
        self.padding_side = padding_side
        self.source = source
        ids = {key: backend.token_to_id(tok) for key, tok in special_tokens.items()}
        self.cls_token_id, self.sep_token_id, self.pad_token_id = ids["cls_token"], ids["sep_token"], ids["pad_token"]
        self.unk_token_id = ids["unk_token"]
        if self.cls_token_id is None or self.sep_token_id is None or self.pad_token_id is None:
            raise ValueError(f"{source}: the tokenizer lacks one of {special_tokens['cls_token']}, "
                             f"{special_tokens['sep_token']}, {special_tokens['pad_token']}")

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Tokenizer":
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as Backend

        folder = Path(folder)
        config = _read_json(folder / "tokenizer_config.json")
        config = {**_read_json(folder / "special_tokens_map.json"), **config}
        # DistilBertTokenizerFast's defaults when tokenizer_config.json is silent.
        lowercase = config.get("do_lower_case", True)
        strip_accents = config.get("strip_accents", None)
        chinese = config.get("tokenize_chinese_chars", True)
        special = _special_tokens(config)
        if (folder / "tokenizer.json").is_file():
            try:
                backend = Backend.from_file(str(folder / "tokenizer.json"))
            except Exception as e:  # the Rust side raises a bare Exception on a malformed file
                raise ValueError(f"{folder / 'tokenizer.json'}: cannot be loaded ({e})") from None
            _apply_normalizer_flags(backend, lowercase, strip_accents, chinese)
        elif (folder / "vocab.txt").is_file():
            backend = _bert_backend(folder / "vocab.txt", lowercase, strip_accents, chinese,
                                    special["unk_token"], special["cls_token"], special["sep_token"])
        else:
            raise OSError(f"{folder}: no tokenizer.json or vocab.txt")
        # PreTrainedTokenizerFast.__init__ adds the special tokens the backend does not know as added
        # tokens, so e.g. a literal "[SEP]" in a context stays one token.
        known = set(backend.get_added_tokens_decoder()[i].content for i in backend.get_added_tokens_decoder())
        missing = [t for t in special.values() if t not in known and backend.token_to_id(t) is not None]
        if missing:
            backend.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        # Truncation or padding stored in tokenizer.json never applies: encode_pair sets its own.
        backend.no_truncation()
        backend.no_padding()
        return cls(backend, special, int(config.get("model_max_length", VERY_LARGE_INTEGER)), lowercase,
                   config.get("padding_side", "right"), source=str(folder))

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path, revision: str | None = None,
                        local_files_only: bool = False) -> "Tokenizer":
        from . import hub

        return cls.from_folder(hub.resolve(path_or_repo_id, revision, local_files_only))

    # --- plain text -------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of one text, without [CLS]/[SEP]."""
        self._plain()
        return self.backend.encode(_check_text(text, "text"), add_special_tokens=False).tokens

    def encode(self, text: str, pair: str | None = None) -> list[int]:
        """Ids of `[CLS] text [SEP]` (or `[CLS] text [SEP] pair [SEP]`), untruncated."""
        self._plain()
        return self.backend.encode(_check_text(text, "text"), pair).ids

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.backend.id_to_token(int(i)) for i in ids]

    def _plain(self) -> None:
        self.backend.no_truncation()
        self.backend.no_padding()

    # --- the question-answering encoding ----------------------------------------------------------------

    def encode_pair(self, question: str, context: str, max_length: int = 384, stride: int = 128,
                    padding: str | bool = "do_not_pad") -> list[Window]:
        """Encode one question/context pair into windows (see the module docstring)."""
        return self.encode_pairs([question], [context], max_length, stride, padding)[0]

    def encode_pairs(self, questions: list[str], contexts: list[str], max_length: int = 384, stride: int = 128,
                     padding: str | bool = "do_not_pad") -> list[list[Window]]:
        """`encode_pair` for many pairs in one call of the (parallel) tokenizers library."""
        padding = _padding_strategy(padding)
        if len(questions) != len(contexts):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
        pairs = [(_check_text(q, "question"), _check_text(c, "context")) for q, c in zip(questions, contexts)]
        if not pairs:
            return []
        self._check_room(pairs, max_length, stride)
        self.backend.enable_truncation(max_length, stride=stride, strategy="only_second", direction="right")
        if padding == "do_not_pad":
            self.backend.no_padding()
        else:
            self.backend.enable_padding(direction="right", pad_id=self.pad_token_id,
                                        pad_token=self.special_tokens["pad_token"], pad_type_id=0,
                                        length=max_length if padding == "max_length" else None)
        try:
            if padding == "longest":  # transformers encodes one pair at a time: "longest" is per pair
                encodings = [self.backend.encode(q, c) for q, c in pairs]
            else:
                encodings = self.backend.encode_batch(pairs)
        finally:
            self._plain()
        return [[self._window(e) for e in [enc, *enc.overflowing]] for enc in encodings]

    def _check_room(self, pairs, max_length: int, stride: int) -> None:
        # The tokenizers library fails these cases with an error or a Rust panic (and a backtrace on
        # stderr); check first so the caller gets one clear ValueError instead.
        self._plain()
        for enc, (q, _) in zip(self.backend.encode_batch(pairs), pairs):
            seq = enc.sequence_ids
            n_question, n_context = seq.count(0), seq.count(1)
            if len(seq) <= max_length:
                continue
            room = max_length - n_question - (len(seq) - n_question - n_context)
            if room < 1:
                raise ValueError(f"the question is {n_question} tokens long: with max_seq_len {max_length} no "
                                 f"room is left for the context (question: {q[:60]!r})")
            if stride >= room:
                raise ValueError(f"doc_stride {stride} must be smaller than the {room} context tokens that fit in "
                                 f"max_seq_len {max_length} beside this {n_question}-token question")

    def _window(self, enc) -> Window:
        seq = tuple(enc.sequence_ids)
        ids = np.asarray(enc.ids, dtype=np.int64)
        # p_mask as the pipeline builds it: 1 on every non-context token, then 0 at [CLS].
        p_mask = np.array([s != 1 for s in seq], dtype=bool)
        p_mask[ids == self.cls_token_id] = False
        return Window(ids, np.asarray(enc.attention_mask, dtype=np.int64),
                      np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2), seq, p_mask, enc)


def _check_text(text, name: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a string, found {type(text).__name__}")
    if not text:
        raise ValueError(f"{name} cannot be empty")
    return text


def _padding_strategy(padding) -> str:
    # transformers' PaddingStrategy: True means "longest", False "do_not_pad".
    if padding is True:
        return "longest"
    if padding is False or padding is None:
        return "do_not_pad"
    if padding not in PADDING:
        raise ValueError(f"padding must be one of {PADDING} or a bool, found {padding!r}")
    return padding
