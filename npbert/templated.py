"""Templated question answering: generated paragraphs about invented people, questions about them, and a
WordPiece vocabulary trained on the text; the data of the "It learns, visibly" recipe (docs/training.md).

Each paragraph tells four facts about an invented person (of six: a birthplace, a birthday, a job, an
employer, a number of siblings, a pet; each fact's answers of their own kind: a city, a date, ...), one
sentence a fact, the sentences shuffled; each question asks for one fact. With `people=2` a paragraph tells
of two people, so that answering needs the name matched as well as the kind of fact. Every fact is told and
asked in several templates, and the split is by TEMPLATE: the held-out file's sentences and questions use
only forms the training file never uses (`The {noun} of {name} is {value}.`, `Which is the {noun} of
{name}?`), made of words it does use, so a model scoring well on it has learnt more than the training
phrasings (how much more: docs/training.md). Names, places and dates come from the same lists in both
files, in other combinations.

Output is SQuAD v1.1 JSON (every answer's answer_start is its place in the context). The vocabulary is
made from the training file's text only (every word whole, and the characters: `train_tokenizer`), with
the `tokenizers` library's cased BERT normaliser and pre-tokeniser, and saved as a BERT/DistilBERT
tokenizer folder (tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json) without a
tokenizer_class: transformers and npbert then take the class from the model's config.json, so one folder
serves a DistilBERT or a BERT.
Everything is drawn from one seeded `random.Random`: the same seed, the same files, byte for byte.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FIRST_NAMES = (
    "Anna Boris Clara Daniel Elena Farid Greta Hugo Ines Jonas Karin Leon Maria Nils Olga Pavel Rosa Samir "
    "Tessa Umar Vera Walter Yara Zoltan Alice Bruno Chloe Diego Emma Felix Hana Ivan Julia Kofi Lena Marco"
).split()
LAST_NAMES = (
    "Adler Berg Costa Dahl Eriksen Fischer Garcia Horvat Ibsen Jensen Kowalski Larsen Moreau Novak Okafor "
    "Petrov Quinn Rossi Silva Tanaka Unger Varga Weber Young Zimmer Becker Conti Duval Lindqvist Mendes"
).split()
CITIES = (
    "Lisbon Oslo Vienna Prague Dublin Lyon Porto Krakow Bergen Turin Seville Ghent Tartu Leeds Graz Malmo "
    "Utrecht Bilbao Riga Zagreb Geneva Cork Bremen Nantes Aarhus Brno Split Salzburg Tampere Bologna"
).split()
JOBS = (
    "baker nurse pilot teacher carpenter chemist lawyer painter plumber builder dentist farmer librarian "
    "welder journalist tailor"
).split()
EMPLOYERS = (
    "Northwind Bluepeak Redstone Silverline Greenfield Oakmont Brightwater Ironbridge Stonegate Westbrook "
    "Maplewood Clearview Harborlight Sunridge"
).split()
MONTHS = "January February March April May June July August September October November December".split()

PETS = "dog cat parrot rabbit horse goat hamster turtle donkey canary ferret pony".split()

# Each fact's answers are of their own kind (a city, a date, a job, a company, a number, an animal). A fact
# is told in its own sentence and a sentence form shared by every fact, and asked in its own question and
# three shared question forms; the held-out file tells and asks every fact in one more form of each, which
# training never uses, made of the training forms' pieces in new combinations: no held-out word is new.
NOUNS = {
    "birthplace": "birthplace",
    "birthdate": "birthday",
    "job": "job",
    "employer": "employer",
    "siblings": "number of siblings",
    "pet": "pet",
}
TOLD = {  # the fact's own sentence
    "birthplace": "{name} was born in {value}.",
    "birthdate": "{name} was born on {value}.",
    "job": "{name} works as a {value}.",
    "employer": "The company {name} works for is {value}.",
    "siblings": "{name} has {value} siblings.",
    "pet": "{name} has a pet {value}.",
}
ASKED = {  # the fact's own question
    "birthplace": "Where was {name} born?",
    "birthdate": "Which day was {name} born on?",
    "job": "What does {name} work as?",
    "employer": "Who does {name} work for?",
    "siblings": "How many siblings does {name} have?",
    "pet": "What pet does {name} have?",
}
SENTENCE_FORMS = (["{name}'s {noun} is {value}."], ["The {noun} of {name} is {value}."])
QUESTION_FORMS = (
    ["What is the {noun} of {name}?", "What is {name}'s {noun}?", "Name the {noun} of {name}."],
    ["Which is the {noun} of {name}?"],
)


def _templates(forms, own, fact):
    """(training templates, held-out templates) of a fact; {name} and {value} stay to be filled."""
    train, held_out = ([f.replace("{noun}", NOUNS[fact]) for f in split] for split in forms)
    return [own[fact], *train], held_out


# fact -> (training templates, held-out templates); {name} is the person, {value} the answer
SENTENCES = {fact: _templates(SENTENCE_FORMS, TOLD, fact) for fact in NOUNS}
QUESTIONS = {fact: _templates(QUESTION_FORMS, ASKED, fact) for fact in NOUNS}
FACTS = tuple(SENTENCES)
SPLITS = ("train", "held_out")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def person(rng: random.Random, taken=frozenset()) -> dict:
    """An invented person, with a name not in `taken`, and four of the six facts."""
    name = None
    while name is None or name in taken:
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    values = {
        "birthplace": rng.choice(CITIES),
        "birthdate": f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1930, 2010)}",
        "job": rng.choice(JOBS),
        "employer": rng.choice(EMPLOYERS),
        "siblings": str(rng.randint(0, 9)),
        "pet": rng.choice(PETS),
    }
    return {"name": name, **{fact: values[fact] for fact in rng.sample(FACTS, 4)}}


def paragraph(rng: random.Random, split: str, questions: int, index: int, people: int = 1) -> dict:
    """One SQuAD paragraph: `people` people's facts as shuffled sentences of `split`'s templates, and
    `questions` questions of `split`'s templates, each about a different fact."""
    which = SPLITS.index(split)
    crowd = [person(rng)]
    while len(crowd) < people:
        crowd.append(person(rng, {p["name"] for p in crowd}))
    facts = [(p, fact) for p in crowd for fact in FACTS if fact in p]
    rng.shuffle(facts)
    sentences, where, at = [], {}, 0
    for p, fact in facts:
        template = rng.choice(SENTENCES[fact][which])
        before = template[: template.index("{value}")].format(name=p["name"])  # the sentence up to the value
        sentences.append(template.format(name=p["name"], value=p[fact]))
        where[p["name"], fact] = at + len(before)
        at += len(sentences[-1]) + 1  # and the space between sentences
    context = " ".join(sentences)
    qas = []
    for k, (p, fact) in enumerate(rng.sample(facts, questions)):
        question = rng.choice(QUESTIONS[fact][which]).format(name=p["name"])
        start = where[p["name"], fact]
        assert context[start : start + len(p[fact])] == p[fact]
        qas.append(
            {"id": f"{split}-{index}-{k}", "question": question, "answers": [{"text": p[fact], "answer_start": start}]}
        )
    return {"context": context, "qas": qas}


def dataset(split: str, paragraphs: int, seed: int, questions: int = 3, people: int = 1) -> dict:
    """A SQuAD v1.1 dataset of `paragraphs` paragraphs of the split's templates, drawn from `seed`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, found {split!r}")
    rng = random.Random(f"{seed}-{split}")
    paras = [paragraph(rng, split, questions, i, people) for i in range(paragraphs)]
    return {"version": "1.1", "data": [{"title": f"templated-{split}", "paragraphs": paras}]}


def texts(data: dict):
    """Every context and question of a SQuAD dataset, in file order."""
    for article in data["data"]:
        for p in article["paragraphs"]:
            yield p["context"]
            yield from (qa["question"] for qa in p["qas"])


def train_tokenizer(corpus, folder: Path, vocab_size: int = 1000, model_max_length: int = 512) -> Path:
    """A cased BERT WordPiece tokenizer for the strings of `corpus`, saved in `folder` as transformers'
    save_pretrained lays out a BertTokenizerFast's files (without tokenizer_class: see the module docstring).

    The vocabulary: the special tokens, the printable ASCII characters alone and as "##" continuations (so no
    text of these characters is [UNK]), then the corpus's words, whole, most frequent first (ties in
    alphabetical order) up to vocab_size, counted after the `tokenizers` library's BERT normaliser and
    pre-tokeniser. Not `tokenizers.trainers.WordPieceTrainer`: its merges break ties in a hash map's order,
    so the same text gives another vocabulary (even another number of tokens) from one process to the next.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=False)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = Counter(
        word for text in corpus for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )
    ascii_chars = [chr(c) for c in range(33, 127)]
    vocab = list(SPECIAL_TOKENS) + ascii_chars + ["##" + c for c in ascii_chars]
    known = set(vocab)
    for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if len(vocab) >= vocab_size:
            break
        if word not in known:
            vocab.append(word)
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.txt").write_text("".join(token + "\n" for token in vocab), encoding="utf-8")
    specials = {f"{name.strip('[]').lower()}_token": name for name in SPECIAL_TOKENS}
    settings = {"do_lower_case": False, "model_max_length": model_max_length, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
    return folder


def write(
    out: Path,
    seed: int = 0,
    train_paragraphs: int = 1000,
    held_out_paragraphs: int = 100,
    vocab_size: int = 1000,
    people: int = 1,
) -> dict:
    """train.json, held_out.json and tokenizer/ (made from train.json's text) in `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "train.json", "held_out": out / "held_out.json"}
    sizes = {"train": train_paragraphs, "held_out": held_out_paragraphs}
    data = {split: dataset(split, sizes[split], seed, people=people) for split in paths}
    for split, path in paths.items():
        path.write_text(json.dumps(data[split], indent=1) + "\n", encoding="utf-8")
    paths["tokenizer"] = train_tokenizer(texts(data["train"]), out / "tokenizer", vocab_size)
    return paths
