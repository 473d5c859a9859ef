"""Why did it answer that: token attributions of an answer's start and end logits, in numpy.

Follows Captum 0.9.0 (`captum.attr`) on the layer the "Interpreting BERT Models" tutorial explains, the
embeddings MODULE's output (`model.embed`: after its LayerNorm, before ELECTRA/ALBERT's projection;
DeBERTa: after its mask multiply), with the model's own backward (`model.gradients_from_embedded`):

- "ig": `LayerIntegratedGradients(f, model.<base>.embeddings)` where f is the start (end) logit at the
  answer's start (end) token. The baseline is the tutorial's: the same ids with every question and context
  token replaced by the pad token, the special tokens ([CLS], [SEP], <s>, </s>, ...) kept, run through the
  embeddings module with the same mask and token types (RoBERTa/XLM-R: its positions follow the ids, as in
  torch). The path is the straight line from the baseline's output x' to the input's x in that output
  space; attributions = (x - x') * sum_i w_i grad f(x' + a_i (x - x')), with Captum's
  approximation_methods (a_i, w_i): "gausslegendre" (default), "riemann_left", "riemann_right",
  "riemann_middle", "riemann_trapezoid". Completeness: the attributions sum to f(x) - f(x'); the
  convergence delta sum(attributions) - (f(x) - f(x')) is reported, as Captum's
  `return_convergence_delta=True` computes it.
- "grad-x-input": `LayerGradientXActivation` on the same layer: grad f(x) * x.
- "smoothgrad": `NoiseTunnel(InputXGradient, nt_type="smoothgrad")` on the same layer's output: the mean,
  over `samples` draws of Gaussian noise n_k (standard deviation `noise` x (max(x) - min(x)) over the
  window's embeddings output, Smilkov et al. 2017's 10-20 %), of grad f(x + n_k) * (x + n_k). The noise
  comes from numpy's Generator(PCG64(seed)): the same call gives the same numbers.
- "rollout": attention rollout (Abnar & Zuidema 2020): per block run (ALBERT's shared blocks count each
  run), the attention averaged over heads, plus the identity, rows normalised to sum to 1, multiplied
  from the first layer to the last; the answer's start (end) token's row says how much of each input
  token flows into that token's last hidden state. No gradient.

Per token, the tutorial's `summarize_attributions`: the [S, E] attributions summed over the hidden
dimension and divided by their L2 norm over the window's tokens (rollout: its row, divided likewise).
Per word (the tokenizer's word ids and offsets): the sum of its tokens' per-token scores.

The answer explained is the pipeline's best answer (transformers' question-answering pipeline), or a
character span of the context the caller gives (on token boundaries). Every window of a long context is
explained (the pipeline's windows: `pipeline.window_settings`, `model_inputs`): a window holding the answer
for the answer's start and end tokens, any other for its own best span as the pipeline ranks it (`target`
says which). Gradients are computed `batch_size` rows at a time (a path point for the start target and one
for the end target are two rows: two separate backward passes, so each is exact), which bounds memory
whatever `n_steps` is: docs/attributions.md.
"""

from __future__ import annotations

import numpy as np

from .pipeline import QuestionAnsweringPipeline, check_parameters, model_inputs, window_settings
from .qa import select_starts_ends

METHODS = ("ig", "grad-x-input", "smoothgrad", "rollout")
APPROXIMATIONS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
DEFAULT_N_STEPS = 50  # Captum's default
DEFAULT_SAMPLES = 20  # SmoothGrad's noisy copies (Smilkov et al. 2017 used 50: fewer cost less, scores noisier)
DEFAULT_NOISE = 0.15  # noise standard deviation as a fraction of the embeddings output's range (10-20 %)
# Most tokens (rows x sequence length) in one backward call: at S = 384 two rows, whatever n_steps is (Captum
# without internal_batch_size takes them all); the memory this holds is measured in docs/performance.md.
BATCH_TOKENS = 1024


class AttributionError(ValueError):
    """A request attributions cannot serve (a method, n_steps or span that does not exist or does not map):
    the caller's fault, said in one line; `field` names the setting at fault (method, n_steps, span, ...)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


# --- the pieces Captum's semantics are built from ---------------------------------------------------------


def approximation(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(step sizes w_i, alphas a_i) [n_steps] float64, as Captum's `approximation_parameters(method)`:
    Gauss-Legendre nodes mapped to [0, 1] (weights halved), or Riemann sums (the trapezoid halves its end
    steps)."""
    check_n_steps(n_steps)
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n_steps)
        return 0.5 * w, 0.5 * (1 + x)
    if method not in APPROXIMATIONS:
        raise AttributionError(f"unknown approximation {method!r}; known: {', '.join(APPROXIMATIONS)}", "approximation")
    if n_steps < 2:  # Captum asserts so for every Riemann rule
        raise AttributionError(f"{method} needs n_steps >= 2, found {n_steps}", "n_steps")
    steps = np.full(n_steps, 1.0 / n_steps)
    if method == "riemann_trapezoid":
        steps[0] /= 2
        steps[-1] /= 2
        alphas = np.linspace(0, 1, n_steps)
    elif method == "riemann_left":
        alphas = np.linspace(0, 1 - 1 / n_steps, n_steps)
    elif method == "riemann_middle":
        alphas = np.linspace(1 / (2 * n_steps), 1 - 1 / (2 * n_steps), n_steps)
    else:
        alphas = np.linspace(1 / n_steps, 1, n_steps)
    # Captum takes its Riemann alphas from torch.linspace in float32 (.tolist()): the same numbers here.
    return steps, alphas.astype(np.float32).astype(np.float64)


def check_n_steps(n_steps) -> int:
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise AttributionError(f"n_steps must be an integer >= 1, found {n_steps!r}", "n_steps")
    return int(n_steps)


def baseline_ids(input_ids, sequence_ids, pad_token_id: int) -> np.ndarray:
    """The tutorial's reference: question (sequence 0) and context (sequence 1) tokens replaced by the pad
    token, special tokens and padding (sequence id None) kept. [S] -> [S]."""
    ids = np.array(input_ids, dtype=np.int64)
    text = np.array([s is not None for s in sequence_ids])
    ids[text] = pad_token_id
    return ids


def summarize(attributions: np.ndarray) -> np.ndarray:
    """The tutorial's `summarize_attributions`: [S, E] summed over the hidden dimension, divided by the L2
    norm over tokens ([S] values are divided as they are). All zeros stay zeros."""
    a = np.asarray(attributions, dtype=np.float64)
    per_token = a.sum(axis=-1) if a.ndim == 2 else a
    norm = np.linalg.norm(per_token)
    return per_token / norm if norm > 0 else per_token


def smoothgrad_noise(seed: int, samples: int, shape: tuple, stdev: float, dtype) -> np.ndarray:
    """The noise SmoothGrad adds: [samples, *shape] draws of N(0, stdev^2) from numpy's
    Generator(PCG64(seed)), in the model's dtype (Captum's NoiseTunnel draws its own with torch.normal)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return (rng.standard_normal((samples, *shape)) * stdev).astype(dtype)


def _one_row(a, name):
    a = np.asarray(a)
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 1:
        raise ValueError(f"{name} must be one window, shape [S] or [1, S], found {list(a.shape)}")
    return a


class Window:
    """One window's model inputs ([1, S] each) and its two targets (token indices of the start and end)."""

    def __init__(self, input_ids, attention_mask=None, token_type_ids=None, start: int = 0, end: int = 0):
        self.input_ids = _one_row(input_ids, "input_ids").astype(np.int64)[None]
        S = self.input_ids.shape[1]
        self.attention_mask = (
            np.ones((1, S), np.int64)
            if attention_mask is None
            else _one_row(attention_mask, "attention_mask").astype(np.int64)[None]
        )
        self.token_type_ids = (
            None if token_type_ids is None else _one_row(token_type_ids, "token_type_ids").astype(np.int64)[None]
        )
        for name, i in (("start", start), ("end", end)):
            if not 0 <= i < S:
                raise ValueError(f"the {name} token {i} is outside the window's {S} tokens")
        self.start, self.end = int(start), int(end)

    def rows(self, n: int) -> dict:
        """The mask and token types repeated for n rows."""
        types = None if self.token_type_ids is None else np.repeat(self.token_type_ids, n, axis=0)
        return {"attention_mask": np.repeat(self.attention_mask, n, axis=0), "token_type_ids": types}


def _embed(model, window: Window, ids: np.ndarray) -> np.ndarray:
    """The embeddings module's output for rows of ids [N, S] with the window's mask and token types."""
    rows = window.rows(len(ids))
    return model.embed(ids, rows["attention_mask"], rows["token_type_ids"])


def _logits(model, window: Window, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """f for the start and end targets at rows of ids [N, S]: (start logit at start, end logit at end) [N]."""
    rows = window.rows(len(ids))
    out = model(ids, attention_mask=rows["attention_mask"], token_type_ids=rows["token_type_ids"])
    return out.start_logits[:, window.start].astype(np.float64), out.end_logits[:, window.end].astype(np.float64)


def target_gradients(model, window: Window, points: np.ndarray, batch_size: int | None = None):
    """grad f at each point [N, S, E] of the embeddings output, for the start target and the end target:
    ([N, S, E], [N, S, E]). `batch_size` rows per backward call (default: BATCH_TOKENS // S, at least 2): a
    point for the start and a point for the end are separate rows, each with its own upstream gradient
    (a one-hot at the target token), so both gradients are exact."""
    N, S = points.shape[:2]
    rows = batch_size or max(2, BATCH_TOKENS // S)
    per_call = max(1, rows // 2)
    d_start, d_end = np.empty_like(points), np.empty_like(points)
    for at in range(0, N, per_call):
        chunk = points[at : at + per_call]
        k = len(chunk)
        up_start = np.zeros((2 * k, S), points.dtype)
        up_end = np.zeros((2 * k, S), points.dtype)
        up_start[:k, window.start] = 1
        up_end[k:, window.end] = 1
        g = model.gradients_from_embedded(
            np.concatenate([chunk, chunk]), window.rows(2 * k)["attention_mask"], up_start, up_end, weights=False
        )
        d_start[at : at + k], d_end[at : at + k] = g.embeddings[:k], g.embeddings[k:]
    return d_start, d_end


# --- the methods, one window each ---------------------------------------------------------------------------


def integrated_gradients(
    model,
    window: Window,
    baseline: np.ndarray,
    n_steps: int = DEFAULT_N_STEPS,
    method: str = "gausslegendre",
    batch_size: int | None = None,
) -> dict:
    """LayerIntegratedGradients on the embeddings module's output for the window's start and end targets.

    baseline: the baseline's ids [S] (`baseline_ids`). Returns {"start", "end": [S, E] attributions in the
    model's dtype, "delta_start", "delta_end": the convergence deltas (float)}."""
    steps, alphas = approximation(method, check_n_steps(n_steps))
    ids = np.concatenate([window.input_ids, _one_row(baseline, "baseline").astype(np.int64)[None]])
    x, x0 = _embed(model, window, ids)
    dtype = x.dtype
    diff = x - x0
    total_start = np.zeros(x.shape, np.float64)
    total_end = np.zeros(x.shape, np.float64)
    rows = batch_size or max(2, BATCH_TOKENS // x.shape[0])
    per_call = max(1, rows // 2)
    for at in range(0, n_steps, per_call):  # the path a chunk at a time: memory stays bounded
        a = alphas[at : at + per_call].astype(dtype)[:, None, None]
        points = x0[None] + a * diff[None]
        g_start, g_end = target_gradients(model, window, points, rows)
        w = steps[at : at + per_call][:, None, None]
        total_start += (w * g_start).sum(axis=0)
        total_end += (w * g_end).sum(axis=0)
    attr_start = (total_start * diff).astype(dtype)
    attr_end = (total_end * diff).astype(dtype)
    f_start, f_end = _logits(model, window, ids)
    return {
        "start": attr_start,
        "end": attr_end,
        "delta_start": float(attr_start.sum(dtype=np.float64) - (f_start[0] - f_start[1])),
        "delta_end": float(attr_end.sum(dtype=np.float64) - (f_end[0] - f_end[1])),
    }


def grad_x_input(model, window: Window) -> dict:
    """LayerGradientXActivation on the embeddings module: grad f(x) * x, for the start and end targets."""
    x = _embed(model, window, window.input_ids)
    g_start, g_end = target_gradients(model, window, x)
    return {"start": g_start[0] * x[0], "end": g_end[0] * x[0]}


def smoothgrad(
    model, window: Window, samples: int = DEFAULT_SAMPLES, noise: float = DEFAULT_NOISE, seed: int = 0, batch_size=None
) -> dict:
    """NoiseTunnel(InputXGradient, nt_type="smoothgrad") on the embeddings module's output: the mean over
    `samples` noisy copies x + n_k of grad f(x + n_k) * (x + n_k); n_k from `smoothgrad_noise(seed, ...)`
    with standard deviation `noise` x (max(x) - min(x)). Returns also the "stdev" used."""
    check_samples(samples)
    check_noise(noise)
    x = _embed(model, window, window.input_ids)[0]
    keep = window.attention_mask[0].astype(bool)
    stdev = float(noise) * float(x[keep].max() - x[keep].min())
    points = x[None] + smoothgrad_noise(seed, samples, x.shape, stdev, x.dtype)
    g_start, g_end = target_gradients(model, window, points, batch_size)
    return {
        "start": (g_start * points).mean(axis=0, dtype=np.float64).astype(x.dtype),
        "end": (g_end * points).mean(axis=0, dtype=np.float64).astype(x.dtype),
        "stdev": stdev,
    }


def check_samples(samples) -> int:
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise AttributionError(f"samples must be an integer >= 1, found {samples!r}", "samples")
    return int(samples)


def check_noise(noise) -> float:
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.floating)) or not 0 <= noise < np.inf:
        raise AttributionError(
            f"noise must be a number >= 0 (a fraction of the embeddings' range), found {noise!r}", "noise"
        )
    return float(noise)


def rollout_matrix(attentions) -> np.ndarray:
    """Attention rollout [S, S] from one window's attention probabilities, one [1, H, S, S] (or [H, S, S])
    per block run in order: each averaged over heads, plus the identity, rows normalised, then multiplied
    from the first run to the last (float64). Row i: how much of each input token reaches token i's output."""
    out = None
    for probs in attentions:
        a = np.asarray(probs, np.float64)
        a = a[0] if a.ndim == 4 else a
        a = a.mean(axis=0) + np.eye(a.shape[-1])
        a /= a.sum(axis=-1, keepdims=True)
        out = a if out is None else a @ out
    return out


def rollout(model, window: Window) -> dict:
    """The rows of the attention rollout at the start and end targets ([S] each, summing to 1)."""
    rows = window.rows(1)
    out = model(window.input_ids, output_attentions=True, **rows)
    r = rollout_matrix(out.attentions)
    return {"start": r[window.start], "end": r[window.end]}


# --- an answer explained: windows, targets, tokens and words -----------------------------------------------


def explain(
    qa,
    question: str,
    context: str,
    method: str = "ig",
    *,
    n_steps: int = DEFAULT_N_STEPS,
    approximation_method: str = "gausslegendre",
    samples: int = DEFAULT_SAMPLES,
    noise: float = DEFAULT_NOISE,
    seed: int = 0,
    span: tuple[int, int] | None = None,
    params: dict | None = None,
    max_windows: int | None = None,
    batch_size: int | None = None,
    model=None,
) -> dict:
    """Attributions of an answer to question/context by `method`, as plain JSON values.

    qa: a QuestionAnsweringPipeline (its model must have embed/gradients_from_embedded for the gradient
    methods; `model`, when given, is used instead of qa.model for everything but the pipeline's answer).
    span: (start, end) characters of the context to explain instead of the pipeline's best answer. params:
    the pipeline's (max_seq_len, doc_stride, max_answer_len, handle_impossible_answer, align_to_words).
    max_windows: a context making more windows is refused (pipeline.WindowLimitError).

    Returns {"method", "answer", "score", "span": [start, end], "settings", then the window's fields when the
    context makes one window, else "windows": [...]}: each window {"window", "tokens", "offsets",
    "sequence_ids", "target": {"start", "end", "holds_answer"}, "start", "end" (per token, summarised),
    "raw_start", "raw_end" (per token, before dividing by the norm), "words": [{"text", "part", "tokens",
    "start", "end"}], and for ig "delta_start", "delta_end"}.
    """
    if method not in METHODS:
        raise AttributionError(f"unknown method {method!r}; known: {', '.join(METHODS)}", "method")
    if method == "ig":
        check_n_steps(n_steps)
        approximation(approximation_method, n_steps)  # refuses an unknown rule or a Riemann n_steps of 1
    if method == "smoothgrad":
        check_samples(samples)
        check_noise(noise)
    params = check_parameters({k: v for k, v in (params or {}).items() if k not in ("top_k", "topk")})
    max_seq_len, doc_stride = window_settings(qa.tokenizer, params.get("max_seq_len"), params.get("doc_stride"))
    limited = QuestionAnsweringPipeline(qa.model, qa.tokenizer, batch_size=qa.batch_size, max_windows=max_windows)
    best = limited(question=question, context=context, **params)  # checks the input and the window count
    windows = qa.tokenizer.encode_pair(question, context, max_seq_len, doc_stride, params.get("padding", "do_not_pad"))
    if span is None:
        c0, c1, score = int(best["start"]), int(best["end"]), float(best["score"])
    else:
        c0, c1 = check_span(span, context, windows)
        score = None
    model = model or qa.model
    out_windows = []
    for i, w in enumerate(windows):
        inputs = model_inputs([w], qa.tokenizer)
        target = _answer_tokens(w, c0, c1)
        holds = target is not None
        if not holds:
            target = _best_span(model, inputs, w, params.get("max_answer_len", 15))
        window = Window(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"), *target)
        scores = _method(
            model, window, w, qa.tokenizer, method, n_steps, approximation_method, samples, noise, seed, batch_size
        )
        out_windows.append(_window_json(i, w, qa.tokenizer, question, context, target, holds, scores))
    settings = {"max_seq_len": max_seq_len, "doc_stride": doc_stride}
    if method == "ig":
        settings.update(n_steps=int(n_steps), approximation=approximation_method, baseline="pad")
    elif method == "smoothgrad":
        settings.update(samples=int(samples), noise=float(noise), seed=int(seed))
    result = {"method": method, "answer": context[c0:c1], "score": score, "span": [c0, c1], "settings": settings}
    if len(out_windows) == 1:
        return {**result, **out_windows[0]}
    return {**result, "windows": out_windows}


def check_span(span, context: str, windows) -> tuple[int, int]:
    """A caller's character span: inside the context, start < end, starting where a context token starts
    and ending where one ends (in some window); else AttributionError."""
    try:
        c0, c1 = (int(v) for v in span)
    except (TypeError, ValueError):
        raise AttributionError(
            f"the span must be two character positions (start, end), found {span!r}", "span"
        ) from None
    if not 0 <= c0 < c1 <= len(context):
        raise AttributionError(
            f"the span {c0}-{c1} is outside the context's {len(context)} characters (0 <= start < end <= "
            f"{len(context)})",
            "span",
        )
    starts, ends = set(), set()
    for w in windows:
        for i, s in enumerate(w.sequence_ids):
            if s == 1:
                starts.add(int(w.offsets[i, 0]))
                ends.add(int(w.offsets[i, 1]))
    if c0 not in starts or c1 not in ends:
        raise AttributionError(
            f"the span {c0}-{c1} ({context[c0:c1]!r}) is not on token boundaries: it must start where a "
            "context token starts and end where one ends",
            "span",
        )
    return c0, c1


def _answer_tokens(w, c0: int, c1: int) -> tuple[int, int] | None:
    """(start token, end token) of the characters c0..c1 in window w, or None when the window does not hold
    them all; the empty answer (c0 == c1) is [CLS]'s, token 0, in every window."""
    if c0 == c1:
        return 0, 0
    inside = [i for i, s in enumerate(w.sequence_ids) if s == 1 and w.offsets[i, 1] > c0 and w.offsets[i, 0] < c1]
    if not inside or w.offsets[inside[0], 0] > c0 or w.offsets[inside[-1], 1] < c1:
        return None
    return inside[0], inside[-1]


def _best_span(model, inputs, w, max_answer_len: int) -> tuple[int, int]:
    """The window's own best span (token indices) as the pipeline ranks it within the window."""
    out = model(inputs["input_ids"], **{k: v for k, v in inputs.items() if k != "input_ids"})
    starts, ends, _, _ = select_starts_ends(
        out.start_logits.astype(np.float32),
        out.end_logits.astype(np.float32),
        w.p_mask[None],
        w.attention_mask[None],
        1000000,
        1,
        False,
        max_answer_len,
    )
    return int(starts[0]), int(ends[0])


def _method(model, window, w, tokenizer, method, n_steps, approximation_method, samples, noise, seed, batch_size):
    if method == "ig":
        base = baseline_ids(w.input_ids, w.sequence_ids, tokenizer.pad_token_id)
        return integrated_gradients(model, window, base, n_steps, approximation_method, batch_size)
    if method == "grad-x-input":
        return grad_x_input(model, window)
    if method == "smoothgrad":
        return smoothgrad(model, window, samples, noise, seed, batch_size)
    return rollout(model, window)


def _window_json(i, w, tokenizer, question, context, target, holds, scores) -> dict:
    start, end = summarize(scores["start"]), summarize(scores["end"])
    raw_start = np.asarray(scores["start"], np.float64)
    raw_end = np.asarray(scores["end"], np.float64)
    if raw_start.ndim == 2:
        raw_start, raw_end = raw_start.sum(axis=-1), raw_end.sum(axis=-1)
    tokens = tokenizer.convert_ids_to_tokens(w.input_ids)
    out = {
        "window": i,
        "tokens": tokens,
        "offsets": w.offsets.tolist(),
        "sequence_ids": list(w.sequence_ids),
        "target": {"start": int(target[0]), "end": int(target[1]), "holds_answer": holds},
        "start": start.tolist(),
        "end": end.tolist(),
        "raw_start": raw_start.tolist(),
        "raw_end": raw_end.tolist(),
        "words": words(w, tokens, question, context, start, end),
    }
    for name in ("delta_start", "delta_end", "stdev"):
        if name in scores:
            out[name] = scores[name]
    return out


def words(w, tokens, question: str, context: str, start, end) -> list[dict]:
    """The window's words (the tokenizer's word ids within the question or the context; each special token a
    word of its own), in order, each with its text, part ("question", "context" or "special"), token indices,
    and start/end scores: the SUM of its tokens' per-token scores."""
    word_ids = w.encoding.word_ids
    groups: dict = {}
    for i, s in enumerate(w.sequence_ids):
        if i >= len(word_ids):
            break
        key = ("special", i) if s is None or word_ids[i] is None else (s, word_ids[i])
        groups.setdefault(key, []).append(i)
    out = []
    for key, idx in groups.items():
        part = "special" if key[0] == "special" else ("question", "context")[key[0]]
        if part == "special":
            text = tokens[idx[0]]
        else:
            source = question if part == "question" else context
            text = source[int(w.offsets[idx[0], 0]) : int(w.offsets[idx[-1], 1])]
        out.append(
            {
                "text": text,
                "part": part,
                "tokens": idx,
                "start": float(np.sum([start[i] for i in idx])),
                "end": float(np.sum([end[i] for i in idx])),
            }
        )
    return out
