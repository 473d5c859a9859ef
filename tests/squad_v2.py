"""SQuAD v2.0-format sets for the tests and notebooks, since no v2.0 dev file is at hand here.

`from_v1` turns SQuAD v1.1 articles (the shared dev set) into a v2.0 set: every answerable question is
kept as it is, and unanswerable ones are made by asking a question of one article about a paragraph of
another article (`answers: []`, `is_impossible: true`, and as `plausible_answers` the answers the question
had in its own paragraph, as the official v2.0 files carry the spans a wrong reader would pick). A question
about another article's paragraph is almost always unanswerable there; the metrics do not depend on it.
Deterministic for a seed.

    python tests/squad_v2.py DEV-v1.1.json OUT-v2.0.json [--articles N] [--seed S]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
from pathlib import Path


def from_v1(articles: list, seed: int = 0, every: int = 1) -> dict:
    """A v2.0 dataset: the v1.1 articles plus, for every `every`-th paragraph, one unanswerable question
    taken from a random paragraph of another article (id: the original id + "_impossible_<article>_<paragraph>")."""
    if len(articles) < 2:
        raise ValueError("unanswerable questions pair an article's question with another article: give >= 2")
    rng = random.Random(seed)
    out = copy.deepcopy(articles)
    for a, article in enumerate(out):
        for p, paragraph in enumerate(article["paragraphs"]):
            if p % every:
                continue
            other = rng.choice([i for i in range(len(articles)) if i != a])
            source = rng.choice(articles[other]["paragraphs"])
            asked = rng.choice(source["qas"])
            paragraph["qas"].append(
                {
                    "id": f"{asked['id']}_impossible_{a}_{p}",
                    "question": asked["question"],
                    "answers": [],
                    "is_impossible": True,
                    "plausible_answers": copy.deepcopy(asked["answers"]),
                }
            )
    for article in out:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qa.setdefault("is_impossible", False)
    return {"version": "v2.0", "data": out}


def counts(dataset: dict) -> tuple[int, int]:
    """(answerable, unanswerable) questions."""
    qas = [qa for a in dataset["data"] for p in a["paragraphs"] for qa in p["qas"]]
    return sum(bool(qa["answers"]) for qa in qas), sum(not qa["answers"] for qa in qas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("v1")
    parser.add_argument("out")
    parser.add_argument("--articles", type=int, default=None, help="only the first N articles")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    articles = json.loads(Path(args.v1).read_text(encoding="utf-8"))["data"][: args.articles]
    dataset = from_v1(articles, args.seed)
    Path(args.out).write_text(json.dumps(dataset, ensure_ascii=False), encoding="utf-8")
    print("answerable %d, unanswerable %d" % counts(dataset))


if __name__ == "__main__":
    main()
