"""Reading a batch's data (JSON Lines, SQuAD JSON or Parquet) into checked rows; a bad row is an error record."""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .. import squad
from .common import BatchError, first_line

# --- reading the data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    path: Path
    count: int  # inputs, good and bad
    rows: list  # (index, id, question, context) of the rows to answer, in input order
    errors: list  # {"index", "id", "where", "reason"} of the rows refused on reading
    squad: squad.Dataset | None  # the dataset when the file is SQuAD JSON (scored at the end)


def _check_row(record, index: int, where: str, seen: dict, rows: list, errors: list) -> None:
    def refuse(reason, qid=None):
        errors.append({"index": index, "id": qid, "where": where, "reason": reason})

    if not isinstance(record, dict):
        return refuse(f"each input must be an object with id, question and context, found {type(record).__name__}")
    qid = record.get("id")
    if qid is None:
        return refuse("missing id")
    if not isinstance(qid, str) or not qid:
        return refuse(f"id must be a non-empty string, found {qid!r}")
    # Ids are kept as written (the outputs carry them unchanged), but two that differ only by Unicode
    # normalisation or surrounding spaces look the same to a reader and to tools that normalise or strip
    # before a join: the later one is refused as a duplicate (docs/distributed.md, "Ids").
    key = unicodedata.normalize("NFC", qid).strip()
    if key in seen:
        first, first_where = seen[key]
        if first == qid:
            return refuse(f"duplicate id {qid!r} (first at {first_where})", qid)
        return refuse(
            f"duplicate id {qid!r}: the same as {first!r} (first at {first_where}) once Unicode-normalised "
            "(NFC) and stripped of surrounding spaces",
            qid,
        )
    seen[key] = (qid, where)
    for key in ("question", "context"):
        value = record.get(key)
        if value is None:
            return refuse(f"missing {key}", qid)
        if not isinstance(value, str):
            return refuse(f"{key} must be a string, found {type(value).__name__}", qid)
        if not value.strip():
            return refuse(f"{key} is empty", qid)
    rows.append((index, qid, record["question"], record["context"]))


def read_inputs(path: str | Path) -> Inputs:
    """The rows of a JSON Lines (*.jsonl, *.ndjson), Parquet (*.parquet, *.pq) or SQuAD JSON file.

    A bad row is an error record; a file that cannot be read at all (absent, not UTF-8, a Parquet file
    without the columns, SQuAD JSON that npbert eval would refuse) raises BatchError."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise BatchError(f"{path}: data file not found")
    rows, errors, seen = [], [], {}
    if suffix in (".jsonl", ".ndjson"):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise BatchError(f"{path}: not UTF-8 text (byte {e.start})") from None
        # JSON Lines end at "\n" only (a "\r" before it is JSON whitespace): str.splitlines would also cut at
        # U+2028, U+0085 and the other separators a JSON string may hold raw.
        lines = text.split("\n")
        index = 0
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue  # a blank line is no input
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(
                    {
                        "index": index,
                        "id": None,
                        "where": f"{path}:{n}",
                        "reason": f"malformed JSON at column {e.colno}: {e.msg}",
                    }
                )
            else:
                _check_row(record, index, f"{path}:{n}", seen, rows, errors)
            index += 1
        return Inputs(path, index, rows, errors, None)
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        wanted = ["id", "question", "context"]
        try:
            names = pq.read_schema(path).names
        except Exception as e:  # pyarrow raises ArrowInvalid and friends on a file that is not Parquet
            raise BatchError(f"{path}: unreadable Parquet file ({first_line(e)})") from None
        missing = [c for c in wanted if c not in names]
        if missing:
            raise BatchError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)})")
        repeated = next((c for c in wanted if names.count(c) > 1), None)
        if repeated is not None:  # pyarrow's own error for it is a many-line schema dump
            raise BatchError(f"{path}: {names.count(repeated)} columns are named {repeated!r}; keep one")
        try:
            table = pq.read_table(path, columns=wanted)  # the others are never read (nor checked)
        except Exception as e:
            raise BatchError(f"{path}: unreadable Parquet file ({first_line(e)})") from None
        columns = [table.column(c).to_pylist() for c in ("id", "question", "context")]
        for index, (qid, question, context) in enumerate(zip(*columns)):
            _check_row(
                {"id": qid, "question": question, "context": context}, index, f"{path}: row {index}", seen, rows, errors
            )
        return Inputs(path, table.num_rows, rows, errors, None)
    try:
        dataset = squad.read_dataset(path)
    except squad.DataError as e:
        raise BatchError(str(e)) from None
    for index, e in enumerate(dataset.examples):
        _check_row({"id": e.id, "question": e.question, "context": e.context}, index, e.location, seen, rows, errors)
    return Inputs(path, len(dataset.examples), rows, errors, dataset)
