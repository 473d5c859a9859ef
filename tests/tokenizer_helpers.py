"""Tokenizer folders for every family, laid out as the hub repositories ship them, trained here on SQuAD
text (or a small built-in corpus when ../shared is absent), and the reference side of the comparisons:
transformers' tokenizer called exactly as its QA pipeline calls it.

Folders are made with the `tokenizers` and `sentencepiece` libraries and with transformers'
`save_pretrained` (the tokenizer.json layouts), never with npbert's code.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import checkpoints

UNICODE_CONTEXTS = [
    "My name is John and I live in Seattle.",
    "Café naïve résumé Ångström façade",  # precomposed accents
    "Cafe\u0301 nai\u0308ve: combining marks after the base letter",
    "東京は日本の首都です。北京 and 上海 are in China.",
    "emoji 😀👍🏽 and flags 🇫🇷 in text 🎉!",
    "zero\u200bwidth\u200cjoiners\u200d and a BOM\ufeff here",
    "שלום עולם and مرحبا بالعالم are right-to-left \u202ekcab\u202c",
    "tabs\there\t\tand   runs    of     spaces\n\nand\r\nnewlines",
    "control\x00chars\x07 and replacement \ufffd and soft\u00adhyphen",
    "[SEP] [CLS] literal special tokens [MASK] inside text",
    "<s> </s> <mask> <pad> <unk> literal RoBERTa specials, and ``quotes'' as ALBERT rewrites them",
    "Supercalifragilisticexpialidocious-antidisestablishmentarianism " * 3,
    "x" * 150 + " a very long word above max_input_chars_per_word",
    "numbers 1,000,000 and 3.14159 and 12,5 percent, 2,",
]
QUESTIONS = ["Where does he live?", "What is 東京?", "  leading and trailing spaces  ", "Café?", "😀"]

# Used when ../shared is absent: enough varied English for the small vocabularies trained below.
BUILTIN_CORPUS = """\
The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.
They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who swore fealty to King Charles III.
Through generations of assimilation and mixing with the native Frankish and Roman-Gaulish populations, their descendants
would gradually merge with the Carolingian-based cultures of West Francia. The distinct cultural and ethnic identity of
the Normans emerged initially in the first half of the 10th century, and it continued to evolve over the succeeding centuries.
Computational complexity theory is a branch of the theory of computation in theoretical computer science that focuses
on classifying computational problems according to their inherent difficulty. A computational problem is understood to
be a task that is in principle amenable to being solved by a computer, which is equivalent to stating that the problem
may be solved by mechanical application of mathematical steps, such as an algorithm.
Southern California, often abbreviated SoCal, is a geographic and cultural region that generally comprises California's
southernmost 10 counties. The region is traditionally described as eight counties, based on demographics and economic ties.
The Super Bowl 50 was an American football game to determine the champion of the National Football League for the 2015 season.
The American Football Conference champion Denver Broncos defeated the National Football Conference champion Carolina
Panthers 24 to 10 to earn their third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium.
Warsaw is the capital and largest city of Poland. It stands on the Vistula River in east-central Poland, roughly
260 kilometres from the Baltic Sea and 300 kilometres from the Carpathian Mountains. Its population is estimated at
1.740 million residents within a greater metropolitan area of 2.666 million residents, which makes Warsaw the 9th
most-populous capital city in the European Union. The city limits cover 516.9 square kilometres.
Oxygen is a chemical element with symbol O and atomic number 8. It is a member of the chalcogen group on the periodic
table and is a highly reactive nonmetal and oxidizing agent that readily forms compounds with most elements.
Genghis Khan was the founder and Great Khan of the Mongol Empire, which became the largest contiguous empire in history.
The Amazon rainforest, also known in English as Amazonia, is a moist broadleaf forest that covers most of the Amazon basin.
Victoria is a state in the south-east of Australia. Melbourne is its capital and largest city. Who was the first to arrive?
What is the name of the river? When did the game happen? How many people live there? Which team won the title in 2016?
Café, naïve, résumé, façade and Ångström keep their accents; 東京 and 北京 are cities; 😀 is a face and 🎉 a party.
"""


BUILTIN_QUESTIONS = [
    "Who were the Normans?",
    "What is the capital?",
    "When was the game played?",
    "How many people live there?",
    "Which team won?",
    "What does the theory classify?",
]


def squad_dev() -> list[dict]:
    if checkpoints.SHARED_SQUAD.is_file():
        return json.loads(checkpoints.SHARED_SQUAD.read_text(encoding="utf-8"))["data"]
    return []


def squad_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` SQuAD v1.1 dev (question, context) pairs, a fixed sample; built-in pairs when ../shared is absent."""
    pairs = [(qa["question"], p["context"]) for a in squad_dev() for p in a["paragraphs"] for qa in p["qas"]]
    if not pairs:
        lines = [line for line in BUILTIN_CORPUS.splitlines() if line]
        contexts = [" ".join(lines[i : i + 3]) for i in range(0, len(lines), 2)]
        pairs = [(q, c) for c in contexts for q in BUILTIN_QUESTIONS]
    return random.Random(seed).sample(pairs, min(n, len(pairs)))


def long_contexts(n: int) -> list[str]:
    """Contexts several hundred tokens long (several paragraphs joined): many windows each."""
    paragraphs = [p["context"] for a in squad_dev()[:20] for p in a["paragraphs"][:3]] or [
        BUILTIN_CORPUS.replace("\n", " ")
    ] * 6
    return [" ".join(paragraphs[i : i + 3]) + " " + UNICODE_CONTEXTS[i % len(UNICODE_CONTEXTS)] for i in range(n)]


def training_text(limit: int = 3000) -> list[str]:
    """Sentences to train the small vocabularies on: SQuAD dev contexts, else the built-in corpus, plus the
    unicode texts so their characters are in the vocabularies."""
    sentences = [s for a in squad_dev() for p in a["paragraphs"] for s in p["context"].split(". ")][:limit]
    sentences = sentences or [line for line in BUILTIN_CORPUS.splitlines() if line] * 4
    return sentences + UNICODE_CONTEXTS + QUESTIONS


def _write_json(path: Path, d: dict) -> None:
    path.write_text(json.dumps(d, indent=2, ensure_ascii=False), encoding="utf-8")


def _config(folder: Path, model_type: str) -> None:
    _write_json(folder / "config.json", {"model_type": model_type, "architectures": ["ForQuestionAnswering"]})


def wordpiece_folder(folder: Path, lowercase: bool, model_type: str = "bert") -> Path:
    """vocab.txt + tokenizer_config.json + config.json as bert-base-(un)cased carry them (no tokenizer.json).
    The vocabulary is the real cased one (lowercased words are still mostly in it), else the generated one."""
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(checkpoints.real_or_generated_vocab()) + "\n", encoding="utf-8")
    _write_json(folder / "tokenizer_config.json", {"do_lower_case": lowercase, "model_max_length": 512})
    _config(folder, model_type)
    return folder


def roberta_folder(folder: Path, add_prefix_space: bool | None = None, vocab_size: int = 2000) -> Path:
    """vocab.json + merges.txt (byte-level BPE trained here) + tokenizer_config.json + config.json, the
    roberta-base layout without tokenizer.json."""
    from tokenizers import ByteLevelBPETokenizer

    folder.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        training_text(),
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    bpe.save_model(str(folder))  # vocab.json, merges.txt ("#version: 0.2" header)
    config = {"model_max_length": 512, "tokenizer_class": "RobertaTokenizer"}
    if add_prefix_space is not None:
        config["add_prefix_space"] = add_prefix_space
    _write_json(folder / "tokenizer_config.json", config)
    _config(folder, "roberta")
    return folder


def sentencepiece_folder(folder: Path, kind: str, vocab_size: int = 1000, model_type: str | None = None) -> Path:
    """A SentencePiece model trained here: kind "xlmr" is a BPE model saved as XLM-R's sentencepiece.bpe.model
    (<unk> <s> </s> first, as fairseq's); "albert" a unigram model saved as ALBERT's spiece.model (<pad> <unk>
    [CLS] [SEP] [MASK] first); "deberta" a unigram model saved as DeBERTa-v3's spm.model ([PAD] [CLS] [SEP]
    [UNK] first, [MASK] not a piece: transformers adds it after them, as deberta-v3-base's 128000).
    `model_type` ("bpe", "unigram") overrides the algorithm (the real XLM-R sentencepiece.bpe.model is a
    unigram model despite its name)."""
    import sentencepiece as spm

    folder.mkdir(parents=True)
    model = io.BytesIO()
    common = dict(
        sentence_iterator=iter(training_text()),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    if kind == "xlmr":
        spm.SentencePieceTrainer.train(
            model_type=model_type or "bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, **common
        )
        (folder / "sentencepiece.bpe.model").write_bytes(model.getvalue())
        _write_json(folder / "tokenizer_config.json", {"model_max_length": 512})
        _config(folder, "xlm-roberta")
    elif kind == "deberta":
        spm.SentencePieceTrainer.train(
            model_type=model_type or "unigram",
            pad_id=0,
            pad_piece="[PAD]",
            bos_id=1,
            bos_piece="[CLS]",
            eos_id=2,
            eos_piece="[SEP]",
            unk_id=3,
            unk_piece="[UNK]",
            **common,
        )
        (folder / "spm.model").write_bytes(model.getvalue())
        _write_json(
            folder / "tokenizer_config.json", {"do_lower_case": False, "vocab_type": "spm", "model_max_length": 512}
        )
        _config(folder, "deberta-v2")
    else:
        spm.SentencePieceTrainer.train(
            model_type=model_type or "unigram",
            pad_id=0,
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            control_symbols=["[CLS]", "[SEP]", "[MASK]"],
            **common,
        )
        (folder / "spiece.model").write_bytes(model.getvalue())
        _write_json(
            folder / "tokenizer_config.json",
            {"do_lower_case": True, "keep_accents": False, "remove_space": True, "model_max_length": 512},
        )
        _config(folder, "albert")
    return folder


def plain_sentencepiece(path: Path, vocab_size: int = 1000) -> Path:
    """A unigram model with sentencepiece's own defaults (<unk> <s> </s> first): no [CLS], [SEP], [PAD] or [MASK]
    pieces, as a model trained outside transformers has (the tokenizer classes add them as added tokens)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


def saved_by_transformers(
    folder: Path,
    class_name: str,
    vocab_file: Path,
    model_type: str,
    keep=None,
    add_tokens=(),
    add_special_tokens=(),
    **kwargs,
) -> Path:
    """The folder transformers' `save_pretrained` writes for `class_name(vocab_file, **kwargs)` (after
    `add_tokens` / `add_special_tokens`), with config.json beside it; `keep`: the files kept (a checkpoint that
    ships only some of them), all when None."""
    import pytest

    transformers = pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")
    tok = getattr(transformers, class_name)(vocab_file=str(vocab_file), **kwargs)
    if add_tokens:
        tok.add_tokens(list(add_tokens))
    if add_special_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(add_special_tokens)})
    tok.save_pretrained(str(folder))
    if keep is not None:
        for path in folder.iterdir():
            if path.name not in keep:
                path.unlink()
    _config(folder, model_type)
    return folder


def with_added_tokens_json(src: Path, dst: Path, tokens: list[str]) -> Path:
    """`src` plus an added_tokens.json numbering `tokens` after the vocabulary, as older fine-tuned checkpoints
    ship entity markers (the ids are what transformers would give them: the base vocabulary's size onwards)."""
    shutil.copytree(src, dst)
    size = reference_tokenizer(src).vocab_size
    _write_json(dst / "added_tokens.json", {token: size + i for i, token in enumerate(tokens)})
    return dst


def without_vocab_lines(src: Path, dst: Path, tokens: list[str]) -> Path:
    """`src` (a vocab.txt layout) with `tokens` removed from vocab.txt."""
    shutil.copytree(src, dst)
    lines = (dst / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (dst / "vocab.txt").write_text("\n".join(t for t in lines if t not in tokens) + "\n", encoding="utf-8")
    return dst


def with_tokenizer_json(src: Path, dst: Path) -> Path:
    """The folder transformers' `save_pretrained` writes from `src` (tokenizer.json, tokenizer_config.json with
    added_tokens_decoder, special_tokens_map.json and the vocabulary files), config.json beside it."""
    tok = reference_tokenizer(src)
    tok.save_pretrained(str(dst))
    shutil.copy(src / "config.json", dst / "config.json")
    assert (dst / "tokenizer.json").is_file()
    return dst


def edit_config(folder: Path, name: str = "tokenizer_config.json", **changes) -> Path:
    d = json.loads((folder / name).read_text(encoding="utf-8"))
    d.update(changes)
    _write_json(folder / name, d)
    return folder


def reference_tokenizer(folder: Path):
    import pytest

    transformers = pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def reference_windows(tok, question: str, context: str, max_length: int, stride: int, padding="do_not_pad"):
    """QuestionAnsweringPipeline.preprocess's tokenizer call (fast path), and its p_mask: 1 where the sequence
    id is not 1, then 0 at every position holding cls_token_id."""
    import numpy as np

    enc = tok(
        text=question,
        text_pair=context,
        padding=padding,
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_token_type_ids=True,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    out = []
    for i in range(len(enc["input_ids"])):
        p_mask = [tok_id != 1 for tok_id in enc.sequence_ids(i)]
        for cls_index in np.nonzero(np.array(enc["input_ids"][i]) == tok.cls_token_id)[0]:
            p_mask[cls_index] = 0
        out.append(
            dict(
                input_ids=enc["input_ids"][i],
                token_type_ids=enc["token_type_ids"][i],
                attention_mask=enc["attention_mask"][i],
                offsets=[list(o) for o in enc["offset_mapping"][i]],
                sequence_ids=enc.sequence_ids(i),
                p_mask=[bool(m) for m in p_mask],
            )
        )
    return out


def npbert_windows(tok, question: str, context: str, max_length: int, stride: int, padding="do_not_pad"):
    return [
        dict(
            input_ids=w.input_ids.tolist(),
            token_type_ids=w.token_type_ids.tolist(),
            attention_mask=w.attention_mask.tolist(),
            offsets=w.offsets.tolist(),
            sequence_ids=list(w.sequence_ids),
            p_mask=w.p_mask.tolist(),
        )
        for w in tok.encode_pair(question, context, max_length, stride, padding)
    ]


def added_tokens(backend) -> dict:
    """A backend's added tokens with every property: what a literal special token in the text becomes."""
    return {
        i: (t.content, t.lstrip, t.rstrip, t.single_word, t.normalized, t.special)
        for i, t in backend.get_added_tokens_decoder().items()
    }
