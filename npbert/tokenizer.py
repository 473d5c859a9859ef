"""Question/context tokenization, equal to the fast tokenizer transformers 4.57.6 `AutoTokenizer` loads.

Families: DistilBERT, BERT (MiniLM too) and ELECTRA (WordPiece), RoBERTa (byte-level BPE), XLM-RoBERTa,
ALBERT and DeBERTa-v2/v3 (SentencePiece). Follows transformers 4.57.6:

- `models/auto/tokenization_auto.py`: the class is tokenizer_config.json's `tokenizer_class`, else
  config.json's `model_type` (`TOKENIZER_MAPPING_NAMES`);
- `tokenization_utils_base.py` `_from_pretrained` and `__init__` (the added tokens: tokenizer_config.json's
  added_tokens_decoder, else added_tokens.json; which special tokens, model_max_length,
  padding_side, truncation_side, model_input_names) and `tokenization_utils_fast.py`
  `PreTrainedTokenizerFast.__init__` (tokenizer.json, the added tokens, the pre-tokenizer's add_prefix_space);
- the classes' `__init__` overrides: `models/{bert,distilbert,electra}/tokenization_*_fast.py` (normalizer
  flags), `models/roberta/tokenization_roberta_fast.py` (post-processor add_prefix_space/trim_offsets), the
  RoBERTa/XLM-R/ALBERT mask token;
- without tokenizer.json, `convert_slow_tokenizer.py`'s converters, in tokenizer_files.py (its own job:
  reading the slow tokenizers' vocabulary files).

The `tokenizers` library does the actual work, configured exactly as transformers configures it, so ids,
type ids, offsets and overflow windows are the same by construction (tests/test_tokenizer.py and
tests/test_tokenizer_families.py check it).

API
---
    tok = Tokenizer.from_folder(folder, model_type=None)   # model_type: config.json's, read when None
    tok = Tokenizer.from_pretrained(path_or_repo_id, revision=None)   # via npbert.hub
    tok.tokenize("Where is Seattle?")              # ['Where', 'is', 'Seattle', '?']
    tok.encode("Where is Seattle?")                # [101, ..., 102]  ([CLS] text [SEP], <s> text </s>, ...)
    windows = tok.encode_pair(question, context, max_length=384, stride=128, padding="do_not_pad")
    w = windows[0]
    w.input_ids       # [S] int64: specials, question, specials, context window, special (+ pads if padded)
    w.token_type_ids  # [S] int64: 0 question, 1 context (BERT, ELECTRA, ALBERT, DeBERTa); all 0 (RoBERTa, XLM-R)
    w.attention_mask  # [S] int64: 1 token, 0 padding
    w.offsets         # [S, 2] int64: character span of each token in its own text ((0, 0) for specials)
    w.sequence_ids    # tuple [S]: 0 question, 1 context, None special/padding
    w.p_mask          # [S] bool: True where a token cannot be part of an answer (all but context and CLS)
    w.encoding        # the tokenizers.Encoding (token_to_word, word_to_chars, ...)
    tok.model_input_names   # what the model takes, e.g. ("input_ids", "attention_mask")

`encode_pair` is the pipeline's encoding: question first, `truncation="only_second"` so only the
context is cut, and when it does not fit, overflow windows where consecutive windows share `stride`
context tokens. A question too long to leave room for context raises ValueError (transformers raises the
tokenizers library's truncation error in the same cases).

Every method may be called from many threads at once: the backend is never reconfigured after loading;
each (max_length, stride, padding) setting gets its own configured copy, made once and cached.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .families import FAMILIES, TOKENIZER_BY_FILE, TOKENIZERS, TokenizerClass
from .tokenizer_files import convert, token_content

# transformers' stand-in for "no limit" when tokenizer_config.json gives no model_max_length.
VERY_LARGE_INTEGER = int(1e30)
# Characters of question/context pairs encoded at once to count their tokens before making windows.
CHECK_CHARS = 1 << 20
# tokenization_utils_base.SpecialTokensMixin.SPECIAL_TOKENS_ATTRIBUTES, in its order (the order tokens are added).
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
PADDING = ("do_not_pad", "longest", "max_length")
# Configured backend copies kept per Tokenizer (a server may see many max_seq_len/doc_stride settings).
# A copy of a 250k-piece XLM-R backend holds tens of MB: few settings are kept.
MAX_CONFIGURED = 8


@dataclass(frozen=True)
class Window:
    """One model input: the question and one window of the context."""

    input_ids: np.ndarray  # [S] int64
    attention_mask: np.ndarray  # [S] int64
    offsets: np.ndarray  # [S, 2] int64
    sequence_ids: tuple  # [S] of 0, 1 or None
    p_mask: np.ndarray  # [S] bool
    encoding: object  # tokenizers.Encoding
    token_type_ids: np.ndarray  # [S] int64: the tokenizer's type ids (padding: type id 0)

    def __len__(self) -> int:
        return len(self.input_ids)


# --- reading the files ----------------------------------------------------------------------------------


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


class _Settings:
    """tokenizer_config.json (and special_tokens_map.json) with each value checked as it is read."""

    def __init__(self, folder: Path):
        self.path = folder / "tokenizer_config.json"
        self.config = _read_json(self.path)
        self.special_map_path = folder / "special_tokens_map.json"
        self.special_map = _read_json(self.special_map_path)

    def flag(self, key: str, default, none_ok: bool = False):
        value = self.config.get(key, default)
        if isinstance(value, bool) or (none_ok and value is None):
            return value
        raise ValueError(f"{self.path}: {key} must be true or false{' or null' if none_ok else ''}, found {value!r}")

    def choice(self, key: str, default: str, allowed: tuple) -> str:
        value = self.config.get(key, default)
        if value not in allowed:
            raise ValueError(f"{self.path}: {key} must be one of {', '.join(map(repr, allowed))}, found {value!r}")
        return value

    def model_max_length(self, default=None) -> int:
        # PreTrainedTokenizerBase.__init__: absent or null means no limit (VERY_LARGE_INTEGER).
        value = self.config.get("model_max_length", default)
        if value is None:
            return VERY_LARGE_INTEGER
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{self.path}: model_max_length must be a positive integer or null, found {value!r}")
        return value

    def model_input_names(self, default: tuple) -> tuple:
        value = self.config.get("model_input_names", default)
        if (
            not isinstance(value, (list, tuple))
            or not value
            or not all(isinstance(v, str) for v in value)
            or "input_ids" not in value
        ):
            raise ValueError(
                f"{self.path}: model_input_names must be a list of names including 'input_ids', found {value!r}"
            )
        return tuple(value)


def _added_token(value, where: str, key: str, special: bool | None = None):
    """A token as tokenizer_config.json may store it: a string, or an AddedToken dict."""
    from tokenizers import AddedToken

    if isinstance(value, (str, AddedToken)):
        return value
    if isinstance(value, dict):
        fields = {k: v for k, v in value.items() if k != "__type"}
        if special is not None:  # special_tokens_map.json's AddedToken dicts are special
            fields["special"] = special
        content = fields.get("content")
        known = {"content", "single_word", "lstrip", "rstrip", "normalized", "special"}
        if (
            isinstance(content, str)
            and content
            and set(fields) <= known
            and all(isinstance(fields[k], bool) for k in set(fields) - {"content"})
        ):
            return AddedToken(**fields)
    raise ValueError(
        f"{where}: {key} must be a token string or an AddedToken object with a 'content' string, found {value!r}"
    )


def _tokenizer_class(settings: _Settings, folder: Path, model_type: str | None) -> str:
    """AutoTokenizer's choice: tokenizer_class from tokenizer_config.json, else config.json's model_type."""
    name = settings.config.get("tokenizer_class")
    source = f"{settings.path}: tokenizer_class"
    if name is None:
        config = _read_json(folder / "config.json")
        name = config.get("tokenizer_class")
        source = f"{folder / 'config.json'}: tokenizer_class"
        if name is None:
            model_type = config.get("model_type") if model_type is None else model_type
            if model_type is not None:
                if model_type not in FAMILIES:
                    raise ValueError(
                        f"{folder}: model_type {model_type!r} has no supported tokenizer; supported: "
                        f"{', '.join(FAMILIES)}"
                    )
                return FAMILIES[model_type].tokenizer
            # Nothing names a class: what the files are (a tokenizer.json alone: DistilBERT, as before).
            return next((cls for file, cls in TOKENIZER_BY_FILE if (folder / file).is_file()), "DistilBertTokenizer")
    base = name[:-4] if isinstance(name, str) and name.endswith("Fast") else name
    if base not in TOKENIZERS:
        raise ValueError(
            f"{source} {name!r} is not supported; supported: "
            f"{', '.join(c + 'Fast' for c in TOKENIZERS)} (and their slow names)"
        )
    return base


# --- the backend from tokenizer.json (without it: tokenizer_files.py converts the slow files) ------------


def _load_backend(path: Path):
    from tokenizers import Tokenizer as Backend

    try:
        return Backend.from_file(str(path))
    except Exception as e:  # the Rust side raises a bare Exception on a malformed file
        raise ValueError(
            f"{path}: cannot be loaded ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None


# --- the fast classes' __init__ overrides ---------------------------------------------------------------


def _rebuilt(component, module, set_all: bool = False, **wanted):
    """`component` rebuilt from its state with `wanted` values, or None when it already has them (the
    fast classes compare state.get(key, wanted) and rebuild only on a difference). `set_all`: every wanted
    key is set (the WordPiece classes' normalizer), else only the keys the state has."""
    if component is None:
        return None
    try:
        state = json.loads(component.__getstate__())
    except Exception:  # a component that does not serialise: transformers leaves it too
        return None
    if all(state.get(k, v) == v for k, v in wanted.items()):
        return None
    for key in ("sep", "cls"):
        if key in state:
            state[key] = tuple(state[key])
    cls = getattr(module, state.pop("type"))
    state.update({k: v for k, v in wanted.items() if set_all or k in state})
    return cls(**state)


def _apply_normalizer_flags(backend, lowercase: bool, strip_accents, chinese: bool) -> None:
    """BertTokenizerFast/DistilBertTokenizerFast/ElectraTokenizerFast.__init__: tokenizer_config.json's flags
    win over tokenizer.json's normalizer."""
    from tokenizers import normalizers

    new = _rebuilt(
        backend.normalizer,
        normalizers,
        set_all=True,
        lowercase=lowercase,
        strip_accents=strip_accents,
        handle_chinese_chars=chinese,
    )
    if new is not None:
        backend.normalizer = new


def _apply_prefix_space(backend, add_prefix_space: bool, roberta: bool, trim_offsets: bool) -> None:
    """PreTrainedTokenizerFast.__init__ (the pre-tokenizer's add_prefix_space) and RobertaTokenizerFast.__init__
    (the post-processor's add_prefix_space and trim_offsets)."""
    from tokenizers import pre_tokenizers, processors

    new = _rebuilt(backend.pre_tokenizer, pre_tokenizers, add_prefix_space=add_prefix_space)
    if new is not None:
        backend.pre_tokenizer = new
    if roberta:
        new = _rebuilt(backend.post_processor, processors, add_prefix_space=add_prefix_space, trim_offsets=trim_offsets)
        if new is not None:
            backend.post_processor = new


def _special_values(settings: _Settings) -> dict:
    """The special-token values `_from_pretrained` passes on: tokenizer_config.json's, and when it has no
    added_tokens_decoder, special_tokens_map.json's over them."""
    config = settings.config
    values = {k: config[k] for k in SPECIAL_TOKEN_KEYS + ("additional_special_tokens",) if k in config}
    if "added_tokens_decoder" in config:
        return values
    for key, value in settings.special_map.items():
        if key in SPECIAL_TOKEN_KEYS:
            values[key] = _added_token(value, settings.special_map_path, key, special=True)
        elif key == "additional_special_tokens" and isinstance(value, list):
            extra = list(values.get("additional_special_tokens") or [])
            for token in value:
                token = _added_token(token, settings.special_map_path, key, special=True)
                if token not in extra:
                    extra.append(token)
            values[key] = extra
    return values


def _special_tokens(values: dict, family: TokenizerClass, where: Path) -> tuple[dict, list]:
    """The special tokens the class gets: {attribute: token} (the configured values over the class defaults) and
    the additional special tokens."""
    special = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = values.get(key, family.defaults.get(key))
        if value is not None:
            special[key] = _added_token(value, where, key)
    extra = values.get("additional_special_tokens") or []
    if not isinstance(extra, list):
        raise ValueError(f"{where}: additional_special_tokens must be a list, found {extra!r}")
    return special, [_added_token(t, where, "additional_special_tokens") for t in extra]


def _declared_tokens(settings: _Settings, folder: Path, values: dict) -> list:
    """`_from_pretrained`'s added_tokens_decoder, [(id, AddedToken)] by id: tokenizer_config.json's, else (the
    legacy layout) added_tokens.json's, each special when tokenizer_config.json / special_tokens_map.json name it
    as a special token (the class defaults do not count there) and normalized when not."""
    from tokenizers import AddedToken

    config, where = settings.config, settings.path
    decoder = config.get("added_tokens_decoder")
    declared = []
    if decoder is not None:
        if not isinstance(decoder, dict):
            raise ValueError(f"{where}: added_tokens_decoder must be an object of id: AddedToken, found {decoder!r}")
        for idx, token in decoder.items():
            if not str(idx).lstrip("-").isdigit() or not isinstance(token, dict):
                raise ValueError(
                    f"{where}: added_tokens_decoder entry {idx!r} must map an integer id to an "
                    f"AddedToken object, found {token!r}"
                )
            declared.append((int(idx), _added_token(token, where, f"added_tokens_decoder[{idx}]")))
        return sorted(declared, key=lambda t: t[0])
    path = folder / "added_tokens.json"
    encoder = _read_json(path)
    named = {
        token_content(_added_token(v, where, k)) for k, v in values.items() if k in SPECIAL_TOKEN_KEYS and v is not None
    }
    named |= {
        token_content(_added_token(t, where, "additional_special_tokens"))
        for t in values.get("additional_special_tokens") or []
    }
    for text, idx in encoder.items():
        if not text or isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise ValueError(
                f"{path}: expected a JSON object mapping token strings to integer ids, found {text!r}: {idx!r}"
            )
        declared.append(
            (idx, AddedToken(text, rstrip=False, lstrip=False, normalized=text not in named, special=text in named))
        )
    return sorted(dict(declared).items())  # a repeated id: the last entry wins, as in the dict transformers fills


def _add_special_tokens(
    backend, settings: _Settings, family: TokenizerClass, from_tokenizer_json: bool, values: dict, declared: list
):
    """The added tokens `_from_pretrained` + `PreTrainedTokenizerFast.__init__` give the backend (`declared`:
    `_declared_tokens`).

    Returns {attribute: token content} of the special tokens."""
    from tokenizers import AddedToken

    where = settings.path
    from_config = declared
    # The special-token values become the declared AddedToken of the same text: tokenizer_config.json's
    # added_tokens_decoder, else tokenizer.json's added tokens. (Not added_tokens.json's: _from_pretrained
    # files those under str(token), where `token` is its own `token=` argument, None: never a token's text.)
    if "added_tokens_decoder" in settings.config:
        added_map = {tok.content: tok for _, tok in declared}
    elif from_tokenizer_json:  # its added tokens, as loaded (nothing is added to the backend before this)
        stored = backend.get_added_tokens_decoder()
        added_map = {tok.content: tok for _, tok in sorted(stored.items())}
        from_config = [(idx, tok) for idx, tok in declared if idx not in stored]  # tokenizer.json's win at an id
    else:
        added_map = {}
    special_values, extra = _special_tokens(values, family, where)
    special = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = special_values.get(key)
        if value is None:
            continue
        value = added_map.get(token_content(value), value)
        # the class __init__ wraps a plain-string mask token (the slow class's wrapping wins without tokenizer.json)
        slow = not from_tokenizer_json
        wrap = (family.slow_tokens if slow else {"mask_token": family.mask_fast} if family.mask_fast else None) or {}
        if isinstance(value, str) and wrap.get(key):
            fields = dict(wrap[key])
            if slow:  # the slow tokenizer marks it special before the fast one copies it: normalized stays
                fields = {"normalized": not fields.get("special", False), **fields, "special": True}
            value = AddedToken(value, **fields)
        special[key] = value
    extra = [added_map.get(token_content(t), t) for t in extra]
    # PreTrainedTokenizerFast.__init__: every added_tokens_decoder entry, then each special token the backend
    # does not yet have (a plain string only when no added token has its text; an AddedToken always, which
    # updates an existing entry's properties), all marked special.
    known = {t.content for t in backend.get_added_tokens_decoder().values()} | {t.content for _, t in from_config}
    to_add = [tok for _, tok in from_config]
    special_contents = {token_content(t) for t in [*special.values(), *extra]}
    for token in [*special.values(), *extra]:
        if isinstance(token, str):
            if token in known:
                continue
            token = AddedToken(token, special=True)
            known.add(token.content)
        elif any(token == t for t in to_add if not isinstance(t, str)):
            continue
        to_add.append(token)
    for token in to_add:
        if token.content in special_contents:
            token.special = True
    if to_add:
        backend.add_tokens(to_add)
    return {key: token_content(value) for key, value in special.items()}


class TooManyWindows(ValueError):
    """Pair `index` of an encode_pairs call would make `windows` windows, over `limit` (none was made)."""

    def __init__(self, index: int, windows: int, limit: int):
        super().__init__(f"pair {index} makes {windows} windows, over the limit of {limit}")
        self.index, self.windows, self.limit = index, windows, limit


# --- the tokenizer --------------------------------------------------------------------------------------


class Tokenizer:
    """A `tokenizers.Tokenizer` plus what transformers reads from tokenizer_config.json."""

    def __init__(
        self,
        backend,
        special_tokens: dict[str, str],
        model_max_length: int = VERY_LARGE_INTEGER,
        do_lower_case: bool = True,
        padding_side: str = "right",
        source: str = "",
        model_input_names: tuple = TOKENIZERS["DistilBertTokenizer"].model_input_names,
        tokenizer_class: str = "DistilBertTokenizer",
        truncation_side: str = "right",
    ):
        if padding_side != "right":
            raise ValueError(
                f"{source}: padding_side {padding_side!r} is not supported (question-first encoding needs 'right')"
            )
        # Never reconfigured after this point: every thread may use it at once (see _configured).
        self.backend = backend
        self.special_tokens = dict(special_tokens)
        self.model_max_length = model_max_length
        self.do_lower_case = do_lower_case
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.model_input_names = tuple(model_input_names)
        self.tokenizer_class = tokenizer_class
        self.source = source
        ids = {key: backend.token_to_id(tok) for key, tok in self.special_tokens.items()}
        self.cls_token_id, self.sep_token_id = ids.get("cls_token"), ids.get("sep_token")
        self.pad_token_id, self.unk_token_id = ids.get("pad_token"), ids.get("unk_token")
        if self.cls_token_id is None or self.sep_token_id is None or self.pad_token_id is None:
            raise ValueError(
                f"{source}: the tokenizer lacks one of {self.special_tokens.get('cls_token')}, "
                f"{self.special_tokens.get('sep_token')}, {self.special_tokens.get('pad_token')}"
            )
        self._lock = threading.Lock()
        self._configured: OrderedDict = OrderedDict()
        self._json: str | None = None  # the backend serialised, once (_serialized)

    @classmethod
    def from_folder(cls, folder: str | Path, model_type: str | None = None) -> "Tokenizer":
        """The tokenizer `AutoTokenizer.from_pretrained(folder)` builds. `model_type`: config.json's (read from
        the folder when None); tokenizer_config.json's tokenizer_class wins over it, as in transformers."""
        folder = Path(folder)
        settings = _Settings(folder)
        name = _tokenizer_class(settings, folder, model_type)
        family = TOKENIZERS[name]
        # from_slow: true makes PreTrainedTokenizerFast.__init__ convert the vocabulary files, tokenizer.json or not
        from_json = (folder / "tokenizer.json").is_file() and not settings.flag("from_slow", False)
        lowercase = strip_accents = chinese = None
        if family.kind == "wordpiece":
            lowercase = settings.flag("do_lower_case", True)
            strip_accents = settings.flag("strip_accents", None, none_ok=True)
            chinese = settings.flag("tokenize_chinese_chars", True)
        add_prefix_space = settings.flag("add_prefix_space", False)
        trim_offsets = settings.flag("trim_offsets", True)
        values = _special_values(settings)
        declared = _declared_tokens(settings, folder, values)
        if from_json:
            backend = _load_backend(folder / "tokenizer.json")
            if family.kind == "wordpiece":
                _apply_normalizer_flags(backend, lowercase, strip_accents, chinese)
        else:
            missing = [f for f in family.files if not (folder / f).is_file()]
            if missing:
                without = (
                    "from_slow in tokenizer_config.json, but no"
                    if (folder / "tokenizer.json").is_file()
                    else "no tokenizer.json or"
                )
                raise OSError(f"{folder}: {without} {' + '.join(family.files)} for {name}Fast")
            backend = convert(
                folder,
                family,
                settings,
                *_special_tokens(values, family, settings.path),
                declared,
                lowercase,
                strip_accents,
                chinese,
                add_prefix_space,
            )
        # A truncation or padding stored in tokenizer.json sets transformers' defaults (config values win).
        stored_padding = backend.padding
        padding_side = settings.choice(
            "padding_side", stored_padding["direction"] if stored_padding else "right", ("right", "left")
        )
        stored_truncation = backend.truncation
        truncation_side = settings.choice(
            "truncation_side", stored_truncation["direction"] if stored_truncation else "right", ("right", "left")
        )
        special = _add_special_tokens(backend, settings, family, from_json, values, declared)
        backend.encode_special_tokens = settings.flag("split_special_tokens", False)
        _apply_prefix_space(backend, add_prefix_space, family.kind == "bpe", trim_offsets)
        # encode_pair sets its own truncation and padding, on configured copies.
        backend.no_truncation()
        backend.no_padding()
        do_lower_case = (
            lowercase if family.kind == "wordpiece" else settings.flag("do_lower_case", family.kind == "albert")
        )
        return cls(
            backend,
            special,
            settings.model_max_length(),
            do_lower_case,
            padding_side,
            source=str(folder),
            model_input_names=settings.model_input_names(family.model_input_names),
            tokenizer_class=name,
            truncation_side=truncation_side,
        )

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path,
        revision: str | None = None,
        local_files_only: bool = False,
        model_type: str | None = None,
    ) -> "Tokenizer":
        from . import hub

        return cls.from_folder(hub.resolve(path_or_repo_id, revision, local_files_only), model_type)

    # --- plain text -------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """Tokens of one text, without special tokens."""
        return self.backend.encode(_check_text(text, "text"), add_special_tokens=False).tokens

    def encode(self, text: str, pair: str | None = None) -> list[int]:
        """Ids of `text` (or of `text` and `pair`) with the special tokens, untruncated."""
        return self.backend.encode(_check_text(text, "text"), pair).ids

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.backend.id_to_token(int(i)) for i in ids]

    # --- the question-answering encoding ----------------------------------------------------------------

    def encode_pair(
        self, question: str, context: str, max_length: int = 384, stride: int = 128, padding: str | bool = "do_not_pad"
    ) -> list[Window]:
        """Encode one question/context pair into windows (see the module docstring)."""
        return self.encode_pairs([question], [context], max_length, stride, padding)[0]

    def encode_pairs(
        self,
        questions: list[str],
        contexts: list[str],
        max_length: int = 384,
        stride: int = 128,
        padding: str | bool = "do_not_pad",
        max_windows: int | None = None,
    ) -> list[list[Window]]:
        """`encode_pair` for many pairs in one call of the (parallel) tokenizers library. With `max_windows`,
        a pair that would make more windows raises TooManyWindows before any window is made."""
        padding = _padding_strategy(padding)
        if len(questions) != len(contexts):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
        pairs = [(_check_text(q, "question"), _check_text(c, "context")) for q, c in zip(questions, contexts)]
        if not pairs:
            return []
        counts = self._check_room(pairs, max_length, stride)
        if max_windows is not None:
            # Counted from the untruncated encoding: making the windows of a huge context first would take
            # memory in proportion to it (every window is a copy of its tokens), not to the limit.
            over = next((i for i, n in enumerate(counts) if n > max_windows), None)
            if over is not None:
                raise TooManyWindows(over, counts[over], max_windows)
        backend = self._configured_backend(max_length, stride, padding)
        if padding == "longest":  # transformers encodes one pair at a time: "longest" is per pair
            encodings = [backend.encode(q, c) for q, c in pairs]
        else:
            encodings = backend.encode_batch(pairs)
        return [[self._window(e) for e in [enc, *enc.overflowing]] for enc in encodings]

    def _configured_backend(self, max_length: int, stride: int, padding: str):
        """A copy of the backend with this truncation and padding, made once per setting: setting them on a
        shared backend while another thread encodes fails ("Already borrowed") or leaks one call's settings
        into another's."""
        key = (max_length, stride, padding)
        with self._lock:
            backend = self._configured.get(key)
            if backend is not None:
                self._configured.move_to_end(key)
                return backend
        from tokenizers import Tokenizer as Backend

        backend = Backend.from_str(self._serialized())
        backend.encode_special_tokens = self.backend.encode_special_tokens
        backend.enable_truncation(max_length, stride=stride, strategy="only_second", direction=self.truncation_side)
        if padding != "do_not_pad":
            backend.enable_padding(
                direction="right",
                pad_id=self.pad_token_id,
                pad_token=self.special_tokens["pad_token"],
                pad_type_id=0,
                length=max_length if padding == "max_length" else None,
            )
        with self._lock:
            backend = self._configured.setdefault(key, backend)
            while len(self._configured) > MAX_CONFIGURED:
                self._configured.popitem(last=False)  # a thread still holding it keeps its reference
        return backend

    def _serialized(self) -> str:
        """The backend as tokenizer.json text, made once per Tokenizer. Serialising is when the tokenizers
        library warns about a vocabulary with holes (ids with no token: "The OrderedVocab you are attempting
        to save contains holes for indices [...]", megabytes on some checkpoints), and it prints that from
        Rust onto the process's stdout, where it broke `npbert ask --json`: it goes to stderr instead."""
        with self._lock:
            if self._json is None:
                with _rust_stdout_to_stderr(self.source):
                    self._json = self.backend.to_str()
            return self._json

    def _check_room(self, pairs, max_length: int, stride: int) -> list[int]:
        """How many windows each pair makes. The tokenizers library fails a pair with no room for the
        context, or a stride as large as that room, with an error or a Rust panic (and a backtrace on
        stderr); they are checked here so the caller gets one clear ValueError instead."""
        counts = []
        for enc, (q, _) in zip(self._untruncated(pairs), pairs):
            seq = enc.sequence_ids
            n_question, n_context = seq.count(0), seq.count(1)
            if len(seq) <= max_length:
                counts.append(1)
                continue
            room = max_length - n_question - (len(seq) - n_question - n_context)
            if room < 1:
                raise ValueError(
                    f"the question is {n_question} tokens long: with max_seq_len {max_length} no "
                    f"room is left for the context (question: {q[:60]!r})"
                )
            if stride >= room:
                raise ValueError(
                    f"doc_stride {stride} must be smaller than the {room} context tokens that fit in "
                    f"max_seq_len {max_length} beside this {n_question}-token question"
                )
            # tokenizers' Encoding.truncate: windows of `room` context tokens starting every room - stride
            # tokens, until one reaches the end
            counts.append(1 + -(-(n_context - room) // (room - stride)))
        return counts

    def _untruncated(self, pairs):
        """The untruncated encoding of each pair, in order, encoded in groups of at most CHECK_CHARS
        characters (a pair longer than that alone): each encoding is only counted, and holding a whole call's
        long contexts at once would take memory in proportion to the call."""
        group, size = [], 0
        for pair in pairs:
            n = len(pair[0]) + len(pair[1])
            if group and size + n > CHECK_CHARS:
                yield from self.backend.encode_batch(group)
                group, size = [], 0
            group.append(pair)
            size += n
        if group:
            yield from self.backend.encode_batch(group)

    def _window(self, enc) -> Window:
        seq = tuple(enc.sequence_ids)
        ids = np.asarray(enc.ids, dtype=np.int64)
        # p_mask as the pipeline builds it: 1 on every non-context token, then 0 wherever the id is CLS's.
        p_mask = np.array([s != 1 for s in seq], dtype=bool)
        p_mask[ids == self.cls_token_id] = False
        return Window(
            ids,
            np.asarray(enc.attention_mask, dtype=np.int64),
            np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2),
            seq,
            p_mask,
            enc,
            np.asarray(enc.type_ids, dtype=np.int64),
        )


_warned: set = set()  # library warnings already shown by this process (each once)


@contextlib.contextmanager
def _rust_stdout_to_stderr(source: str):
    """What native code prints on file descriptor 1 inside the block goes to stderr instead, once per
    process and shortened to a line (a long list of numbers is cut to its first and last few): stdout is
    a command's machine-readable output. Python's own stdout is flushed first, so none of it is caught."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (AttributeError, OSError, ValueError):  # no stdout (closed, or None): nothing to keep clean
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            caught.seek(0)
            text = " ".join(caught.read().decode("utf-8", "replace").split())
    if text and text not in _warned:
        _warned.add(text)
        short = re.sub(r"\[((?:\d+, ){8,})(\d+)\]", _shortened_list, text)
        print(f"warning from the tokenizers library ({source}): {short}", file=sys.stderr)


def _shortened_list(m: re.Match) -> str:
    items = m.group(0)[1:-1].split(", ")
    return f"[{', '.join(items[:3])}, ... {', '.join(items[-2:])}: {len(items)} in all]"


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
