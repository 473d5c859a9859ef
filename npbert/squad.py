"""SQuAD data reading and the official metrics.

The metrics follow the official scripts `evaluate-v1.1.py` and `evaluate-v2.0.py`
(https://rajpurkar.github.io/SQuAD-explorer/) to the bit: the same answer normalisation, the same
per-question scores with the same Python types (v1.1 adds bools and ints, v2.0 ints and floats), summed
in the same order, so the same floats and the same JSON. Two cases the official v2.0 script does not
define (it raises KeyError) are defined here: a question with no prediction scores 0 and still counts,
as in v1.1; a missing no-answer probability is a clear error.

Datasets are read from SQuAD JSON (`{"version", "data": [articles]}`) or JSON Lines of
`{"id", "question", "context", "answers"}`, and checked: every problem names the file and the JSON path
(or line) where it is.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

VERSIONS = ("1.1", "2.0")

# --- the official metrics ------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace (in that order)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _common(pred_tokens: list[str], gold_tokens: list[str]) -> int:
    return sum((Counter(pred_tokens) & Counter(gold_tokens)).values())


def _f1(num_same: int, n_pred: int, n_gold: int) -> float:
    precision = 1.0 * num_same / n_pred
    recall = 1.0 * num_same / n_gold
    return (2 * precision * recall) / (precision + recall)


def exact_match_v1(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def f1_v1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    num_same = _common(pred, ref)
    return 0 if num_same == 0 else _f1(num_same, len(pred), len(ref))


def exact_match_v2(gold: str, prediction: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(prediction))


def f1_v2(gold: str, prediction: str) -> float:
    """As v1.1, except that an answer with no tokens (no-answer) scores 1 against another, else 0."""
    ref = normalize_answer(gold).split() if gold else []
    pred = normalize_answer(prediction).split() if prediction else []
    if not ref or not pred:
        return int(ref == pred)
    num_same = _common(pred, ref)
    return 0 if num_same == 0 else _f1(num_same, len(pred), len(ref))


def _questions(articles: list) -> list[dict]:
    return [qa for article in articles for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


def evaluate_v1(articles: list, predictions: dict) -> dict:
    """`evaluate-v1.1.py`: {"exact_match", "f1"}, percentages over all questions; no prediction scores 0."""
    exact_match = f1 = total = 0
    for qa in _questions(articles):
        total += 1
        if qa["id"] not in predictions:
            continue
        golds = [answer["text"] for answer in qa["answers"]]
        if not golds:
            raise ValueError(
                f"question {qa['id']!r} has no gold answer: SQuAD v1.1 needs at least one "
                "(unanswerable questions are SQuAD v2.0)"
            )
        prediction = predictions[qa["id"]]
        exact_match += max(exact_match_v1(prediction, gold) for gold in golds)
        f1 += max(f1_v1(prediction, gold) for gold in golds)
    if total == 0:
        raise ValueError("the dataset holds no questions")
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def _percentages(exact: dict, f1: dict, qids: list) -> dict:
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact.get(k, 0) for k in qids) / total,
        "f1": 100.0 * sum(f1.get(k, 0) for k in qids) / total,
        "total": total,
    }


def _best_threshold(predictions: dict, scores: dict, na_probs: dict, has_answer: dict) -> tuple[float, float]:
    """Sweep the no-answer threshold over the sorted probabilities, as the official `find_best_thresh`."""
    score = best_score = sum(1 for k in has_answer if not has_answer[k] and k in scores)
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            diff = scores[qid]
        else:
            diff = -1 if predictions[qid] else 0
        score += diff
        if score > best_score:
            best_score, best_thresh = score, na_probs[qid]
    return 100.0 * best_score / len(has_answer), best_thresh


def evaluate_v2(articles: list, predictions: dict, na_probs: dict | None = None, na_prob_thresh: float = 1.0) -> dict:
    """`evaluate-v2.0.py`: exact, f1, total, the HasAns/NoAns splits, and with `na_probs` the best thresholds.
    No-answer is the empty string. A question with na_prob > na_prob_thresh counts as answered "no answer"."""
    has_answer, exact_raw, f1_raw = {}, {}, {}  # question id -> ..., in dataset order
    for qa in _questions(articles):
        qid = qa["id"]
        has_answer[qid] = bool(qa["answers"])
        golds = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])] or [""]
        if qid in predictions:
            exact_raw[qid] = max(exact_match_v2(gold, predictions[qid]) for gold in golds)
            f1_raw[qid] = max(f1_v2(gold, predictions[qid]) for gold in golds)
    if not has_answer:
        raise ValueError("the dataset holds no questions")
    probs = na_probs if na_probs is not None else {k: 0.0 for k in predictions}
    missing = [k for k in exact_raw if k not in probs]
    if missing:
        raise ValueError(
            f"no-answer probabilities: question {missing[0]!r} has a prediction but no probability "
            f"({len(missing)} such questions)"
        )

    def thresholded(scores):
        return {k: float(not has_answer[k]) if probs[k] > na_prob_thresh else s for k, s in scores.items()}

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)
    out = _percentages(exact, f1, list(has_answer))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [k for k, v in has_answer.items() if v == wanted]
        if qids:
            out.update({f"{prefix}_{k}": v for k, v in _percentages(exact, f1, qids).items()})
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = _best_threshold(predictions, exact_raw, probs, has_answer)
        out["best_f1"], out["best_f1_thresh"] = _best_threshold(predictions, f1_raw, probs, has_answer)
    return out


def evaluate(
    dataset, predictions: dict, version: str | None = None, na_probs: dict | None = None, na_prob_thresh: float = 1.0
) -> dict:
    """Score `predictions` ({question id: answer text}) against `dataset`: a SQuAD JSON object, its `data`
    list, or a `Dataset` from `read_dataset`. The version defaults to the dataset's own, else 1.1."""
    if isinstance(dataset, Dataset):
        version, articles = version or dataset.version, dataset.articles
    elif isinstance(dataset, dict):
        version, articles = version or dataset.get("version"), dataset["data"]
    else:
        articles = dataset
    version = check_version(version or "1.1")
    if version == "1.1":
        if na_probs is not None:
            raise ValueError("no-answer probabilities apply only to SQuAD v2.0")
        return evaluate_v1(articles, predictions)
    return evaluate_v2(articles, predictions, na_probs, na_prob_thresh)


def check_version(version) -> str:
    v = str(version).strip().lower().removeprefix("v")
    if v not in VERSIONS:
        raise ValueError(f"unknown SQuAD version {version!r}: expected 1.1 or 2.0")
    return v


def missing_predictions(dataset: "Dataset", predictions: dict) -> list[str]:
    return [e.id for e in dataset.examples if e.id not in predictions]


# --- reading -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    context: str
    answers: tuple[str, ...]  # gold answer texts; () = unanswerable (v2.0)
    location: str  # file and JSON path or line, for messages


@dataclass(frozen=True)
class Dataset:
    path: Path
    version: str | None  # as the file says ("1.1", "2.0"); None for JSON Lines
    articles: list  # the official `data` layout, which the metrics read
    examples: list[Example]  # the questions in file order

    def head(self, n: int | None) -> "Dataset":
        """The first n questions (all when n is None), with `articles` cut to match, for scoring a partial run."""
        if n is None or n >= len(self.examples):
            return self
        keep = {e.id for e in self.examples[:n]}
        articles = [
            {**a, "paragraphs": [{**p, "qas": [qa for qa in p["qas"] if qa["id"] in keep]} for p in a["paragraphs"]]}
            for a in self.articles
        ]
        return Dataset(self.path, self.version, articles, self.examples[:n])


class DataError(ValueError):
    """A dataset, prediction or probability file that cannot be used, naming the file and the place."""


def _load_json(path: Path, what: str):
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a {what} file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (JSON Lines files must be named *.jsonl)" if e.msg == "Extra data" else ""
        raise DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}{hint}") from None


def _expect(value, kind, where: str, what: str):
    names = {dict: "an object", list: "an array", str: "a string", int: "an integer"}
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataError(f"{where}: {what} must be {names[kind]}, found {type(value).__name__}")
    return value


def _field(obj: dict, key: str, kind, where: str):
    if key not in obj:
        raise DataError(f"{where}: missing key {key!r}")
    return _expect(obj[key], kind, f"{where}.{key}", key)


def _answer_texts(answers, where: str) -> list[dict]:
    """Gold answers as the official layout's [{"text", "answer_start"}]; JSON Lines may also give a list of
    strings or the Hugging Face datasets layout {"text": [...], "answer_start": [...]}."""
    if isinstance(answers, dict) and "text" in answers:
        texts = _expect(answers["text"], list, f"{where}.text", "answers.text")
        starts = answers.get("answer_start", [-1] * len(texts))
        return [
            {"text": _expect(t, str, f"{where}.text[{i}]", "an answer"), "answer_start": s}
            for i, (t, s) in enumerate(zip(texts, starts))
        ]
    out = []
    for i, a in enumerate(_expect(answers, list, where, "answers")):
        if isinstance(a, str):
            out.append({"text": a, "answer_start": -1})
        else:
            out.append(
                {
                    "text": _field(_expect(a, dict, f"{where}[{i}]", "an answer"), "text", str, f"{where}[{i}]"),
                    "answer_start": a.get("answer_start", -1),
                }
            )
    return out


def _check_articles(data, path: Path) -> list[Example]:
    examples = []
    for i, article in enumerate(_expect(data, list, f"{path}: data", "data")):
        where_a = f"{path}: data[{i}]"
        for j, paragraph in enumerate(
            _field(_expect(article, dict, where_a, "an article"), "paragraphs", list, where_a)
        ):
            where_p = f"{where_a}.paragraphs[{j}]"
            context = _field(_expect(paragraph, dict, where_p, "a paragraph"), "context", str, where_p)
            for k, qa in enumerate(_field(paragraph, "qas", list, where_p)):
                where = f"{where_p}.qas[{k}]"
                _expect(qa, dict, where, "a question")
                answers = _field(qa, "answers", list, where)
                for m, answer in enumerate(answers):
                    _field(
                        _expect(answer, dict, f"{where}.answers[{m}]", "an answer"),
                        "text",
                        str,
                        f"{where}.answers[{m}]",
                    )
                examples.append(
                    Example(
                        _field(qa, "id", str, where),
                        _field(qa, "question", str, where),
                        context,
                        tuple(a["text"] for a in answers),
                        where,
                    )
                )
    return examples


def _read_json_lines(path: Path) -> tuple[list, list[Example]]:
    articles, examples = [], []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: data file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = _expect(json.loads(line), dict, where, "each line")
        except json.JSONDecodeError as e:
            raise DataError(f"{where}:{e.colno}: malformed JSON: {e.msg}") from None
        answers = _answer_texts(record.get("answers", None), f"{where}: answers") if "answers" in record else None
        if answers is None:
            raise DataError(f"{where}: missing key 'answers'")
        qa = {
            "id": _field(record, "id", str, where),
            "question": _field(record, "question", str, where),
            "answers": answers,
        }
        context = _field(record, "context", str, where)
        articles.append({"title": record.get("title", ""), "paragraphs": [{"context": context, "qas": [qa]}]})
        examples.append(Example(qa["id"], qa["question"], context, tuple(a["text"] for a in answers), where))
    return articles, examples


def read_dataset(path: str | Path, version: str | None = None) -> Dataset:
    """Read and check a SQuAD JSON file (v1.1 or v2.0) or a JSON Lines file (`*.jsonl`, `*.ndjson`).

    Question ids must be unique (predictions are keyed by id). With version 1.1 (given, or the file's),
    every question needs a gold answer."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        file_version = None
        articles, examples = _read_json_lines(path)
    else:
        obj = _expect(_load_json(path, "data"), dict, f"{path}: top level", "the top level")
        if "data" not in obj:
            raise DataError(
                f'{path}: missing key \'data\' (a SQuAD file is {{"version", "data": [articles]}}; '
                "for one question per line use a .jsonl file)"
            )
        file_version = obj.get("version")
        articles, examples = obj["data"], _check_articles(obj["data"], path)
    if version is None and file_version is not None:
        try:
            check_version(file_version)
        except ValueError:
            raise DataError(f"{path}: version {file_version!r} is not 1.1 or 2.0; pass the version to use") from None
    effective = check_version(version or file_version or "1.1")
    seen = {}
    for e in examples:
        if e.id in seen:
            raise DataError(f"{e.location}: question id {e.id!r} repeats the one at {seen[e.id]}")
        seen[e.id] = e.location
        if effective == "1.1" and not e.answers:
            raise DataError(
                f"{e.location}: question {e.id!r} has no gold answer, which SQuAD v1.1 requires "
                "(unanswerable questions need version 2.0)"
            )
    if not examples:
        raise DataError(f"{path}: no questions")
    return Dataset(path, None if file_version is None else check_version(file_version), articles, examples)


def read_predictions(path: str | Path) -> dict[str, str]:
    """The official predictions file: a JSON object {question id: answer text}."""
    obj = _expect(_load_json(path, "predictions"), dict, f"{path}: top level", "the predictions")
    for qid, text in obj.items():
        _expect(text, str, f"{path}: [{qid!r}]", "each prediction")
    return obj


def read_na_probs(path: str | Path) -> dict[str, float]:
    """The official no-answer probability file: a JSON object {question id: probability}."""
    obj = _expect(_load_json(path, "no-answer probability"), dict, f"{path}: top level", "the probabilities")
    for qid, p in obj.items():
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise DataError(f"{path}: [{qid!r}]: each probability must be a number, found {type(p).__name__}")
    return obj
