"""The tokenizer transformers converts from a checkpoint's slow-tokenizer files when it has no tokenizer.json.

Follows transformers 4.57.6 `convert_slow_tokenizer.py`: `BertConverter` (vocab.txt), `RobertaConverter`
(vocab.json + merges.txt), `XLMRobertaConverter` (sentencepiece.bpe.model), `AlbertConverter` (spiece.model)
and `DebertaV2Converter` (spm.model), reading the files as the slow tokenizers do. SentencePiece models are
read with the `sentencepiece` package's protobuf schema (the `sentencepiece` extra). `convert()` is the one
entry: tokenizer.py calls it and applies the fast classes' own `__init__` overrides afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

from .families import TokenizerClass

SENTENCEPIECE_EXTRA = "pip install -e '.[sentencepiece]'"


def token_content(token) -> str:
    """The text of a token given as a string or a tokenizers.AddedToken."""
    return token if isinstance(token, str) else token.content


def _read_lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readlines()  # universal newlines, as the slow tokenizers read their files
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _require(vocab, tokens, path: Path) -> None:
    for token in tokens:
        if token not in vocab:
            raise ValueError(f"{path}: the vocabulary has no {token} token")


class _SlowIds:
    """The slow tokenizer's `convert_tokens_to_ids`, which the converters ask for the ids the post-processor puts
    around the text: a declared added token's id (added_tokens_decoder / added_tokens.json) first, then the
    vocabulary's, then the id `PreTrainedTokenizer.__init__` gives a special token the vocabulary lacks (the next
    free one, `len(get_vocab())` onwards, in `all_special_tokens_extended` order), else the unknown token's."""

    def __init__(self, vocab: dict, declared: list, specials: list, unk: str):
        self.ids = dict(vocab)
        self.ids.update({token.content: idx for idx, token in declared})
        next_id = len(self.ids)
        for content in specials:
            if content not in self.ids:
                self.ids[content], next_id = next_id, next_id + 1
        self.unk = unk

    def __call__(self, token: str) -> int:
        return self.ids.get(token, self.ids.get(self.unk))


def _bert_backend(
    vocab_file: Path,
    lowercase: bool,
    strip_accents,
    chinese: bool,
    unk: str,
    cls: str,
    sep: str,
    declared: list,
    specials: list,
):
    """BertConverter: WordPiece from vocab.txt, BERT normalizer and pre-tokenizer, [CLS] A [SEP] B [SEP]."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    # BertTokenizer.load_vocab: readlines() (universal newlines), ids in file order, a repeated line's
    # last id wins.
    vocab = {line.rstrip("\n"): i for i, line in enumerate(_read_lines(vocab_file))}
    _require(vocab, (unk,), vocab_file)  # WordPiece cannot encode an unknown word without it
    ids = _SlowIds(vocab, declared, specials, unk)
    backend = Tokenizer(WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=chinese, strip_accents=strip_accents, lowercase=lowercase
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, ids(cls)), (sep, ids(sep))],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _roberta_backend(
    vocab_file: Path,
    merges_file: Path,
    add_prefix_space: bool,
    cls: str,
    sep: str,
    unk: str,
    declared: list,
    specials: list,
):
    """RobertaConverter: byte-level BPE from vocab.json + merges.txt, `<s> A </s></s> B </s>`."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    try:
        vocab = json.loads("".join(_read_lines(vocab_file)))
    except json.JSONDecodeError as e:
        raise ValueError(f"{vocab_file}: not valid JSON ({e})") from None
    if not isinstance(vocab, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in vocab.values()):
        raise ValueError(f"{vocab_file}: expected a JSON object mapping tokens to integer ids")
    # RobertaTokenizer: read().split("\n")[1:-1] (the first line is the "#version" header, the last the
    # empty string after the final newline); a merge seen twice keeps its first place.
    with open(merges_file, encoding="utf-8", newline=None) as f:
        try:
            lines = f.read().split("\n")[1:-1]
        except UnicodeDecodeError as e:
            raise ValueError(f"{merges_file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    merges = list(dict.fromkeys(tuple(line.split()) for line in lines))
    for merge in merges:
        if len(merge) != 2:
            raise ValueError(
                f"{merges_file}: a merge must be two tokens separated by a space, found {' '.join(merge)!r}"
            )
    ids = _SlowIds(vocab, declared, specials, unk)
    try:
        backend = Tokenizer(
            BPE(
                vocab=vocab,
                merges=merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
            )
        )
    except Exception as e:  # e.g. a merge whose tokens are not in the vocabulary
        raise ValueError(f"{merges_file}: does not fit {vocab_file.name} ({e})") from None
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.RobertaProcessing(
        sep=(sep, ids(sep)), cls=(cls, ids(cls)), add_prefix_space=add_prefix_space, trim_offsets=True
    )
    return backend


def _sentencepiece_proto(path: Path):
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise ImportError(
            f"{path}: reading a SentencePiece model needs the sentencepiece extra ({SENTENCEPIECE_EXTRA} from a clone)"
        ) from None
    except Exception as e:  # e.g. protobuf's VersionError: the schema was generated for a newer protobuf
        raise ImportError(
            f"{path}: sentencepiece's model schema does not load with this protobuf "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); reinstall the "
            f"sentencepiece extra ({SENTENCEPIECE_EXTRA} from a clone)"
        ) from None
    from google.protobuf.message import DecodeError

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError as e:
        raise ValueError(f"{path}: not a SentencePiece model ({e})") from None
    if not proto.pieces:
        raise ValueError(f"{path}: not a SentencePiece model (no pieces)")
    return proto


def _generate_merges(vocab: dict, vocab_scores: list) -> list:
    """convert_slow_tokenizer.generate_merges with scores: every split of a piece into two known pieces,
    ordered by the piece's score (then the parts' lengths), best first."""
    merges = []
    for merge, score in dict(vocab_scores).items():
        local = [
            (merge[:i], merge[i:], score) for i in range(1, len(merge)) if merge[:i] in vocab and merge[i:] in vocab
        ]
        merges.extend(sorted(local, key=lambda x: (vocab[x[0]], vocab[x[1]])))
    merges = sorted(merges, key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(m[0], m[1]) for m in merges]


def _spm_backend(
    path: Path,
    kind: str,
    do_lower_case: bool,
    keep_accents: bool,
    split_by_punct: bool,
    unk: str,
    declared: list,
    specials: list,
):
    """SpmConverter as XLMRobertaConverter / AlbertConverter / DebertaV2Converter specialise it."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE, Unigram

    proto = _sentencepiece_proto(path)
    pieces = proto.pieces
    if kind == "xlmr":  # the fairseq ids: <s> <pad> </s> <unk>, then the pieces after the first three, <mask>
        vocab_scores = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
        vocab_scores += [(p.piece, p.score) for p in pieces[3:]] + [("<mask>", 0.0)]
        unk_id = 3
    elif kind == "albert":  # a piece ending in "<digit>," is pushed back (check_number_comma)
        vocab_scores = [
            (p.piece, p.score if len(p.piece) < 2 or p.piece[-1] != "," or not p.piece[-2].isdigit() else p.score - 100)
            for p in pieces
        ]
        unk_id = proto.trainer_spec.unk_id
    else:  # DeBERTa: SpmConverter's own vocabulary, the pieces as they are
        vocab_scores = [(p.piece, p.score) for p in pieces]
        unk_id = proto.trainer_spec.unk_id
    model_type = proto.trainer_spec.model_type
    try:
        if model_type == 1:
            backend = Tokenizer(Unigram(vocab_scores, unk_id=unk_id, byte_fallback=False))
        elif model_type == 2:
            spm_vocab = {p.piece: i for i, p in enumerate(pieces)}  # SentencePieceExtractor's vocabulary
            backend = Tokenizer(
                BPE(
                    {w: i for i, (w, _) in enumerate(vocab_scores)},
                    _generate_merges(spm_vocab, vocab_scores),
                    unk_token=proto.trainer_spec.unk_piece,
                    fuse_unk=True,
                    byte_fallback=False,
                    dropout=None,
                )
            )
        else:
            raise ValueError(
                f"{path}: SentencePiece model type {model_type} is not unigram or BPE "
                "(transformers converts only those)"
            )
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: cannot be converted ({e})") from None
    # control (3) and user-defined (4) pieces become added tokens; control pieces are special
    backend.add_tokens([AddedToken(p.piece, normalized=False, special=p.type == 3) for p in pieces if p.type in (3, 4)])
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if kind == "xlmr":
        steps = [normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), "▁")]
        if charsmap:
            steps.insert(0, normalizers.Precompiled(charsmap))
    elif kind == "deberta":  # lower-cased only when asked (do_lower_case defaults to false), stripped both sides
        steps = [normalizers.Lowercase()] if do_lower_case else []
        steps.append(normalizers.Strip())
        if charsmap:
            steps.append(normalizers.Precompiled(charsmap))
        steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    else:
        steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
        if not keep_accents:
            steps += [normalizers.NFKD(), normalizers.StripAccents()]
        if do_lower_case:
            steps.append(normalizers.Lowercase())
        if charsmap:
            steps.append(normalizers.Precompiled(charsmap))
        steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    backend.normalizer = normalizers.Sequence(steps)
    # The slow XLM-R, ALBERT and DeBERTa tokenizers have no add_prefix_space (nor legacy) attribute: the
    # converter's default True, prepend_scheme "always".
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    if kind == "deberta":  # punctuation split off first when split_by_punct
        punctuation = [pre_tokenizers.Punctuation(behavior="isolated")] if split_by_punct else []
        backend.pre_tokenizer = pre_tokenizers.Sequence([*punctuation, metaspace])
    else:
        backend.pre_tokenizer = metaspace
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    if kind == "xlmr":
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
        )
    else:  # ALBERT and DeBERTa: [CLS] A [SEP] B [SEP], type ids 0 then 1
        # the literal [CLS]/[SEP] whatever cls_token says, as AlbertConverter / DebertaV2Converter write them; a
        # model without those pieces (a plain sentencepiece model) gets them as added tokens
        ids = _SlowIds({p.piece: i for i, p in enumerate(pieces)}, declared, specials, unk)
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids("[CLS]")), ("[SEP]", ids("[SEP]"))],
        )
    return backend


def convert(
    folder: Path,
    family: TokenizerClass,
    settings,
    special: dict,
    extra: list,
    declared: list,
    lowercase,
    strip_accents,
    chinese,
    add_prefix_space: bool,
):
    """The backend transformers converts from the slow tokenizer's files (no tokenizer.json). `special`,
    `extra`: the special tokens (tokenizer.py's `_special_tokens`); `declared`: the added tokens (its
    `_declared_tokens`); `settings`: tokenizer_config.json's flags (`settings.flag(name, default)`)."""
    contents = list(dict.fromkeys(token_content(t) for t in [*special.values(), *extra]))  # all_special_tokens_extended
    unk, cls, sep = (token_content(special[k]) for k in ("unk_token", "cls_token", "sep_token"))
    if family.kind == "wordpiece":
        # do_basic_tokenize: false builds BertConverter's normalizer with every flag off, but
        # BertTokenizerFast.__init__ then sets do_lower_case, strip_accents and tokenize_chinese_chars on it
        # (_apply_normalizer_flags), so the flags below are what the fast tokenizer ends with either way.
        return _bert_backend(folder / "vocab.txt", lowercase, strip_accents, chinese, unk, cls, sep, declared, contents)
    if family.kind == "bpe":
        return _roberta_backend(
            folder / "vocab.json", folder / "merges.txt", add_prefix_space, cls, sep, unk, declared, contents
        )
    deberta = family.kind == "deberta"
    return _spm_backend(
        folder / family.files[0],
        family.kind,
        settings.flag("do_lower_case", not deberta),
        settings.flag("keep_accents", False),
        settings.flag("split_by_punct", False),
        unk,
        declared,
        contents,
    )
