"""From start/end logits to answers: span selection and answer building, pure numpy.

Follows transformers 4.57.6 `pipelines/question_answering.py` (`select_starts_ends`, `decode_spans`,
`QuestionAnsweringPipeline.postprocess`, `get_indices`, `get_answer`) operation for operation, float32
throughout, so that ties and near-ties resolve the same way. One bug is not kept: with exactly as many
candidates as `topk` (S * S for a window of S tokens) transformers' `decode_spans` calls `np.argpartition`
out of bounds and raises; npbert sorts every candidate there. Two quirks are kept on purpose:

- the "is this token desired" test uses `np.isin(starts, mask.nonzero())` on a [1, S] mask, whose
  row indices (all 0) make token 0 ([CLS]) always pass;
- scores are probabilities within one window, compared across windows as they are.

No model and no tokenizer I/O here: a window is its logits, its p_mask and attention mask, and the
`tokenizers.Encoding` used to map tokens back to characters.
"""

from __future__ import annotations

import numpy as np

MASKED_LOGIT = -10000.0  # what the pipeline writes over logits of tokens that cannot be in an answer
NO_NULL_SCORE = 1000000  # the pipeline's "no null score seen yet" (large and positive)


def decode_spans(start, end, topk: int, max_answer_len: int, undesired_tokens):
    """Best `topk` spans by p_start * p_end with start <= end < start + max_answer_len.

    start, end: [1, S] probabilities; undesired_tokens: [1, S], nonzero where a token MAY be in an answer
    (the name is transformers'). Returns token starts, ends and scores, best first.
    """
    if start.ndim == 1:
        start = start[None]
    if end.ndim == 1:
        end = end[None]
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))  # [1, S, S]
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    scores_flat = candidates.flatten()
    if topk == 1:
        idx_sort = [np.argmax(scores_flat)]
    elif len(scores_flat) <= topk:
        # transformers 4.57.6 tests `<` and then asks argpartition for the kth of len(scores_flat) elements,
        # which is out of bounds: there every candidate is wanted, so sorting them all is the answer.
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, topk)[0:topk]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    desired = undesired_tokens.nonzero()  # a tuple (rows, columns): see the module docstring
    keep = np.isin(starts, desired) & np.isin(ends, desired)
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[0, starts, ends]


def select_starts_ends(
    start,
    end,
    p_mask,
    attention_mask,
    min_null_score=NO_NULL_SCORE,
    top_k=1,
    handle_impossible_answer=False,
    max_answer_len=15,
):
    """Softmax the logits of one window over its possible answer tokens, then `decode_spans`.

    start, end: [1, S] float32 logits; p_mask: [1, S] bool (True = not context, [CLS] excepted);
    attention_mask: [1, S] int64 or None. Returns starts, ends, scores, the updated min_null_score.
    """
    start, end, undesired_tokens = _probabilities(start, end, p_mask, attention_mask)
    if handle_impossible_answer:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
    start[0, 0] = end[0, 0] = 0.0  # [CLS] is the null answer, never a span
    starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, undesired_tokens)
    return starts, ends, scores, min_null_score


def possible_tokens(p_mask, attention_mask):  # [1, S] or [S] -> 1 where a token may be in an answer
    """1 for [CLS] and the window's context tokens, 0 for the question, special tokens and padding
    (transformers calls it `undesired_tokens`, though it is 1 where a token is desired)."""
    possible = np.abs(np.array(p_mask) - 1)
    return possible if attention_mask is None else possible & attention_mask


def answer_probabilities(logits, possible):  # one window's [1, S] or [S] logits -> probabilities, same shape
    """The softmax of start (or end) logits over the tokens that may be in an answer, the others set to
    MASKED_LOGIT first, in the logits' dtype (float32, as transformers): `select_starts_ends` before it
    zeroes [CLS], and what the explain route shows."""
    masked = np.where(possible == 0.0, MASKED_LOGIT, logits)
    e = np.exp(masked - masked.max(axis=-1, keepdims=True))
    return e / e.sum()


def _probabilities(start, end, p_mask, attention_mask):
    """The answer probabilities of start and end, and the mask of tokens that may be in an answer."""
    possible = possible_tokens(p_mask, attention_mask)
    return answer_probabilities(start, possible), answer_probabilities(end, possible), possible


def null_score(windows) -> float:
    """The question's no-answer score: the smallest, over its windows, of p_start[CLS] * p_end[CLS] (the
    probabilities of `_probabilities`). It is the score `answers` gives the empty answer with
    handle_impossible_answer, computed the same way whether or not that is on. windows: as `answers`."""
    score = NO_NULL_SCORE
    for start, end, p_mask, attention_mask, _ in windows:
        p_start, p_end, _ = _probabilities(start, end, p_mask, attention_mask)
        score = min(score, (p_start[0, 0] * p_end[0, 0]).item())
    return score


def char_span(encoding, s: int, e: int, align_to_words: bool = True) -> tuple[int, int]:
    """Character span in the context of tokens s..e: whole words when align_to_words (the pipeline's
    `get_indices`), else the tokens' own offsets; falls back to offsets where words do not apply."""
    if align_to_words:
        try:
            start_word = encoding.token_to_word(s)
            end_word = encoding.token_to_word(e)
            return (
                encoding.word_to_chars(start_word, sequence_index=1)[0],
                encoding.word_to_chars(end_word, sequence_index=1)[1],
            )
        except Exception:  # e.g. [CLS] has no word: transformers falls back to offsets too
            pass
    return encoding.offsets[s][0], encoding.offsets[e][1]


def answers(
    windows,
    context: str,
    top_k: int = 1,
    handle_impossible_answer: bool = False,
    max_answer_len: int = 15,
    align_to_words: bool = True,
):
    """The pipeline's `postprocess` for one question: windows -> a dict (one answer) or a list of dicts.

    windows: iterable of (start_logits [1, S], end_logits [1, S], p_mask [1, S], attention_mask [1, S],
    encoding), in window order.
    """
    min_null_score = NO_NULL_SCORE
    found = []
    pre_topk = top_k * 2 + 10 if align_to_words else top_k  # aligning may merge candidates away
    for start, end, p_mask, attention_mask, encoding in windows:
        starts, ends, scores, min_null_score = select_starts_ends(
            start, end, p_mask, attention_mask, min_null_score, pre_topk, handle_impossible_answer, max_answer_len
        )
        for s, e, score in zip(starts, ends, scores):
            start_index, end_index = char_span(encoding, int(s), int(e), align_to_words)
            text = context[start_index:end_index]
            same = next((a for a in found if a["answer"].lower() == text.lower()), None)
            if same:
                same["score"] += score.item()
            else:
                found.append({"score": score.item(), "start": start_index, "end": end_index, "answer": text})
    if handle_impossible_answer:
        found.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    found = sorted(found, key=lambda a: a["score"], reverse=True)[:top_k]
    return found[0] if len(found) == 1 else found
