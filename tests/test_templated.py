"""The templated QA data (npbert/templated.py), its tokenizer, and the random models of npbert/init_weights.py,
without torch: answers where answer_start says, the split by template (every held-out sentence and question
matches a held-out template and no training one, read back from the text with regular expressions), the
same seed giving the same bytes, the tokenizer covering the held-out text, the weights drawn as
`_init_weights` says, and the commands' one-line errors. transformers' side (its own init, its loading of
the folder): tests/parity/test_init_weights_parity.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from npbert import cli, init_weights, templated
from npbert.config import Config
from npbert.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict:
    return templated.write(
        tmp_path_factory.mktemp("templated"), seed=3, train_paragraphs=60, held_out_paragraphs=20, people=2
    )


def questions(path: Path):
    data = json.loads(path.read_text())
    assert data["version"] == "1.1"
    for article in data["data"]:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                yield p["context"], qa


def pattern(template: str) -> re.Pattern:
    """A template as a regular expression: {name} two capitalised words, {value} one word or a date."""
    parts = re.split(r"(\{name\}|\{value\})", template)
    fields = {"{name}": r"(?P<name>[A-Z][a-z]+ [A-Z][a-z]+)", "{value}": r"(?:\w+|\d+ [A-Z][a-z]+ \d+)"}
    regex = "".join(fields.get(p, re.escape(p)) for p in parts)
    return re.compile(regex)


def templates_matched(text: str, table: dict, which: int) -> set:
    return {(fact, t) for fact, pair in table.items() for t in pair[which] if pattern(t).fullmatch(text)}


def test_every_answer_is_at_its_answer_start(generated):
    seen = 0
    for context, qa in questions(generated["train"]):
        (answer,) = qa["answers"]
        assert context[answer["answer_start"] :].startswith(answer["text"])
        seen += 1
    assert seen == 60 * 3


@pytest.mark.parametrize("split", templated.SPLITS)
def test_the_split_is_by_template(generated, split):
    mine, other = templated.SPLITS.index(split), 1 - templated.SPLITS.index(split)
    for context, qa in questions(generated[split]):
        sentences = re.findall(r"[^.]+\.", context)
        assert len(sentences) == 8  # two people, four facts each
        for sentence in (s.strip() for s in sentences):
            assert templates_matched(sentence, templated.SENTENCES, mine), sentence
            assert not templates_matched(sentence, templated.SENTENCES, other), sentence
        (asked,) = templates_matched(qa["question"], templated.QUESTIONS, mine)
        assert not templates_matched(qa["question"], templated.QUESTIONS, other), qa["question"]
        # the name asked about is in the context, and the answer is in that person's sentence
        name = pattern(asked[1]).fullmatch(qa["question"]).group("name")
        start = qa["answers"][0]["answer_start"]
        sentence = next(s for s in re.finditer(r"[^.]+\.", context) if s.start() <= start < s.end())
        assert name in sentence.group(0)


def test_no_template_is_in_both_splits():
    for table in (templated.SENTENCES, templated.QUESTIONS):
        for fact, (train, held_out) in table.items():
            assert train and held_out and not set(train) & set(held_out), fact


def test_the_same_seed_writes_the_same_bytes_and_another_seed_others(generated, tmp_path):
    again = templated.write(tmp_path / "a", seed=3, train_paragraphs=60, held_out_paragraphs=20, people=2)
    other = templated.write(tmp_path / "b", seed=4, train_paragraphs=60, held_out_paragraphs=20)
    for name in ("train", "held_out"):
        assert again[name].read_bytes() == generated[name].read_bytes()
        assert other[name].read_bytes() != generated[name].read_bytes()
    for name in ("tokenizer.json", "vocab.txt"):
        assert (again["tokenizer"] / name).read_bytes() == (generated["tokenizer"] / name).read_bytes()


def test_the_tokenizer_knows_every_held_out_token_from_training_and_loads_as_distilbert_and_bert(generated):
    train, held_out = (json.loads(generated[split].read_text()) for split in templated.SPLITS)
    for model_type in ("distilbert", "bert"):
        tok = Tokenizer.from_folder(generated["tokenizer"], model_type)
        assert tok.tokenizer_class == {"distilbert": "DistilBertTokenizer", "bert": "BertTokenizer"}[model_type]
        assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id] == [0, 1, 2, 3]
        trained = {t for text in templated.texts(train) for t in tok.tokenize(text)}
        for text in templated.texts(held_out):
            assert "[UNK]" not in tok.tokenize(text), text
        for table in (templated.SENTENCES, templated.QUESTIONS):  # the held-out templates' words: all seen
            for _, held in table.values():
                for template in held:
                    words = tok.tokenize(template.replace("{name}", "").replace("{value}", ""))
                    assert set(words) <= trained, template
        # every word whole: no word of the training text is cut into pieces
        assert not any(t.startswith("##") for t in trained)
    vocab = (generated["tokenizer"] / "vocab.txt").read_text().splitlines()
    assert vocab[:5] == list(templated.SPECIAL_TOKENS)


# --- the random model ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", init_weights.FAMILIES)
def test_a_random_model_is_drawn_as_init_weights_says(generated, tmp_path, family):
    import npbert

    out = init_weights.write_random_model(
        tmp_path / family, generated["tokenizer"], family, n_layers=2, dim=32, n_heads=4
    )
    config = Config.from_file(out / "config.json")
    vocab = len((generated["tokenizer"] / "vocab.txt").read_text().splitlines())
    assert (config.model_type, config.vocab_size, config.dim, config.n_layers, config.n_heads, config.hidden_dim) == (
        family,
        vocab,
        32,
        2,
        4,
        128,
    )
    from safetensors.numpy import load_file

    tensors = load_file(str(out / "model.safetensors"))
    word = (
        "distilbert.embeddings.word_embeddings.weight"
        if family == "distilbert"
        else "bert.embeddings.word_embeddings.weight"
    )
    drawn = []
    for key, t in tensors.items():
        assert t.dtype == np.float32
        if "LayerNorm.weight" in key or "layer_norm.weight" in key:
            assert (t == 1).all(), key
        elif key.endswith(".bias") or key.endswith("LayerNorm.bias") or key.endswith("layer_norm.bias"):
            assert (t == 0).all(), key
        else:
            rows = t[1:] if key == word else t
            assert (rows != 0).all(), key
            drawn.append(rows.ravel())
    assert (tensors[word][0] == 0).all()  # the padding row ([PAD] is id 0)
    values = np.concatenate(drawn)
    assert abs(values.mean()) < 1e-3 and values.std() == pytest.approx(0.02, rel=0.01)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (generated["tokenizer"] / name).read_bytes()
    qa = npbert.pipeline("question-answering", model=str(out))
    assert qa(question="Where was Anna Berg born?", context="Anna Berg was born in Oslo.")["answer"]


def test_the_same_seed_draws_the_same_model(generated, tmp_path):
    a = init_weights.write_random_model(tmp_path / "a", generated["tokenizer"], seed=1, dim=16, n_heads=2)
    b = init_weights.write_random_model(tmp_path / "b", generated["tokenizer"], seed=1, dim=16, n_heads=2)
    c = init_weights.write_random_model(tmp_path / "c", generated["tokenizer"], seed=2, dim=16, n_heads=2)
    weights = lambda f: (f / "model.safetensors").read_bytes()  # noqa: E731
    assert weights(a) == weights(b) != weights(c)


# --- the commands ----------------------------------------------------------------------------------------


def test_the_commands_make_data_and_a_model(tmp_path, capsys):
    assert (
        cli.main(["templated", "--out", str(tmp_path / "d"), "--train-paragraphs", "5", "--held-out-paragraphs", "2"])
        == 0
    )
    paths = json.loads(capsys.readouterr().out)
    assert Path(paths["train"]).is_file() and Path(paths["held_out"]).is_file()
    argv = ["init-model", "--tokenizer", paths["tokenizer"], "--out", str(tmp_path / "m"), "--family", "bert"]
    assert cli.main(argv + ["--width", "64", "--heads", "4", "--layers", "1"]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_attention_heads"]) == ("bert", 64, 4)
    assert (config["num_hidden_layers"], config["intermediate_size"]) == (1, 256)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["templated", "--out", "{tmp}/d", "--train-paragraphs", "0"],
            "--train-paragraphs must be at least 1, found 0",
        ),
        (["templated", "--out", "{tmp}/no/d"], "its parent folder does not exist"),
        (["init-model", "--tokenizer", "{tmp}/none", "--out", "{tmp}/m"], "--tokenizer {tmp}/none: no such folder"),
        (["init-model", "--tokenizer", "{tmp}", "--out", "{tmp}/m", "--width", "100", "--heads", "3"], "multiple of"),
        (["init-model", "--tokenizer", "{tmp}", "--out", "{tmp}/m", "--layers", "0"], "--layers must be at least 1"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.format(tmp=tmp_path) in err
