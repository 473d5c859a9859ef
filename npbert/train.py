"""Fine-tuning, and distillation from a teacher, of a question-answering model in numpy: `npbert train`.

Follows transformers 4.57.6's examples: `examples/pytorch/question-answering/run_qa.py` for the training
features (`prepare_train_features`: the question left-stripped, windows of max_seq_len tokens every
doc_stride, padded to max_seq_len, the answer's token span found through the offsets, a window without
the answer or an unanswerable question labelled at the [CLS] token), and
`examples/research_projects/distillation/run_squad_w_distillation.py` for the step (the loss, gradient
accumulation, clipping, AdamW, the schedule, in that order). The forward and backward are model.py's
(`forward_backward`), the optimizer optim.py's.

    loss = alpha_squad * qa_loss + alpha_ce * T^2 * mean over start, end of
           KLDiv(batchmean)(log_softmax(student / T), softmax(teacher / T))        (with a teacher)
    loss = qa_loss                                                                 (without)

The data: SQuAD v1.1/v2.0 JSON or JSON Lines (squad.read_dataset), each question's first answer as its
label. Features in file order; a step takes `batch_size x gradient_accumulation_steps` consecutive features
of the stream of epochs (each epoch a permutation of the features drawn from the seed, or file order with
shuffle off), `batch_size` per forward.

The output folder (locked while running, as `npbert eval`'s):
- `model.safetensors`, `config.json` and the tokenizer files at the end: loadable by transformers'
  `from_pretrained` and by npbert.
- `log.jsonl`: one `{"step", "loss", "learning_rate"}` line per optimizer step (the loss before that step's
  update, the rate that step used).
- `train-state.safetensors` while running: the weights, AdamW's moments, the step, the dropout generator's
  state and the job's fingerprint, written atomically every `save_steps` steps and when the run is stopped
  (Ctrl-C, SIGTERM); the sha256 of its arrays is in its header, so a damaged file is refused, never
  half-read. `resume=True` goes on from it and ends with the weights an uninterrupted run ends with, bit for
  bit. It is removed at the end.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import hub, squad, threads, weights as W
from .config import Config
from .durable import Interrupted, Signals, write_atomic
from .evaluate import JobError, output_lock
from .model import AutoModelForQuestionAnswering, Dropout, forward_backward, prepare_inputs, qa_loss
from .ops import select as select_kernels
from .optim import AdamW, clip_grad_norm, linear_schedule_with_warmup
from .tokenizer import Tokenizer

LOCK = ".npbert-train.lock"
STATE = "train-state.safetensors"
LOG = "log.jsonl"
EVAL_LOG = "eval.jsonl"
STATE_FORMAT = "npbert-train-state/1"
# What save_pretrained writes beside the weights for a tokenizer: copied from the model's folder as found.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "spm.model",
)


@dataclasses.dataclass(frozen=True)
class TrainJob:
    model: str
    data: str
    out: str
    max_steps: int | None = None  # else epochs
    epochs: float = 1.0
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    shuffle: bool = True
    dropout: bool = True
    dtype: str = "float32"
    max_seq_len: int = 384
    doc_stride: int = 128
    teacher: str | None = None
    alpha_ce: float = 0.5
    alpha_squad: float = 0.5
    temperature: float = 2.0
    save_steps: int = 50
    eval_data: str | None = None  # a SQuAD file: npbert eval's score of the trained model at the end
    eval_steps: int | None = None  # and of checkpoint-N/ every N steps
    progress: bool = True

    def check(self, where=lambda key: key) -> "TrainJob":
        """The job, or a JobError naming the first bad setting (at `where(key)`)."""
        positive = ["batch_size", "gradient_accumulation_steps", "max_seq_len", "save_steps"]
        rules = [(n, "at least 1", lambda v: v >= 1) for n in positive]
        rules += [(n, "at least 1", lambda v: v is None or v >= 1) for n in ("max_steps", "eval_steps")]
        rules += [(n, "above 0", lambda v: v > 0) for n in ("epochs", "temperature")]
        zero_or_more = ("learning_rate", "weight_decay", "max_grad_norm", "warmup_steps", "doc_stride")
        zero_or_more += ("alpha_ce", "alpha_squad")
        rules += [(n, "at least 0", lambda v: v >= 0) for n in zero_or_more]
        numbers = ("epochs", "temperature", "learning_rate", "weight_decay", "max_grad_norm", "alpha_ce", "alpha_squad")
        rules += [(n, "a finite number", math.isfinite) for n in numbers]
        rules += [("learning_rate", "below 1 (a step that size diverges)", lambda v: v < 1)]
        if self.max_steps is not None:
            rules += [("warmup_steps", f"at most max_steps ({self.max_steps})", lambda v: v <= self.max_steps)]
        rules += [("dtype", "float32 or float64", lambda v: v in ("float32", "float64"))]
        rules += [("doc_stride", f"smaller than max_seq_len ({self.max_seq_len})", lambda v: v < self.max_seq_len)]
        for name, want, ok in rules:
            if not ok(getattr(self, name)):
                raise JobError(f"{where(name)}: {name} must be {want}, found {getattr(self, name)!r}")
        return self


def make_train_job(settings: dict, where=lambda key: key) -> TrainJob:
    """A TrainJob from a mapping of its field names (CLI flags or a YAML job file); `where(key)` names a key's
    place for messages ("job.yml:4: batch_size", "--batch-size"). Bad values are JobErrors naming the key."""
    fields = {f.name: f for f in dataclasses.fields(TrainJob)}
    values = {}
    for key, value in settings.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(sorted(fields))
            raise JobError(f"{where(key)}: unknown key {key!r} ({hint})")
        kind = fields[key].type.split(" | ")[0]
        if value is None and "None" in fields[key].type:
            values[key] = None
            continue
        ok = {
            "str": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
        }[kind]
        if not ok:
            names = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}
            raise JobError(f"{where(key)}: {key} must be {names[kind]}, found {value!r}")
        values[key] = float(value) if kind == "float" else value
    for key in ("model", "data", "out"):
        if key not in values:
            raise JobError(f"no {key}: give --{key} or `{key}:` in the job file")
    return TrainJob(**values).check(where)


# --- the data ----------------------------------------------------------------------------------------------


class Labelled(NamedTuple):
    question: str
    context: str
    answer_start: int | None  # a character of the context; None: unanswerable (SQuAD v2.0)
    answer_text: str


def labelled_examples(dataset: squad.Dataset) -> list[Labelled]:
    """Each question of the dataset with its first gold answer (run_qa.py's label), in file order. An answer
    without answer_start (JSON Lines may omit it) is found at its first occurrence in the context."""
    out = []
    for article in dataset.articles:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                answers = [] if qa.get("is_impossible") else qa["answers"]
                if not answers:
                    out.append(Labelled(qa["question"], context, None, ""))
                    continue
                text, start = answers[0]["text"], answers[0].get("answer_start", -1)
                if not isinstance(start, int) or isinstance(start, bool) or start < 0:
                    start = context.find(text)
                if start < 0 or context[start : start + len(text)] != text:
                    raise squad.DataError(
                        f"{dataset.path}: question {qa['id']!r}: its answer {text[:40]!r} is not in the context "
                        f"at answer_start {answers[0].get('answer_start')}"
                    )
                out.append(Labelled(qa["question"], context, start, text))
    return out


class Features(NamedTuple):
    input_ids: np.ndarray  # [N, S] int64, padded to max_seq_len
    attention_mask: np.ndarray  # [N, S] int64
    token_type_ids: np.ndarray | None  # [N, S] int64, where the model takes them
    start_positions: np.ndarray  # [N] int64
    end_positions: np.ndarray  # [N] int64
    example: np.ndarray  # [N] int64: the example each feature (window) comes from


def training_features(tokenizer: Tokenizer, examples: list[Labelled], max_seq_len: int, doc_stride: int) -> Features:
    """run_qa.py's prepare_train_features, with padding to max_seq_len (its default)."""
    windows = tokenizer.encode_pairs(
        [e.question.lstrip() for e in examples], [e.context for e in examples], max_seq_len, doc_stride, "max_length"
    )
    rows, starts, ends, owner = [], [], [], []
    for i, (example, ws) in enumerate(zip(examples, windows)):
        for w in ws:
            start, end = answer_tokens(w, example, tokenizer.cls_token_id)
            rows.append(w)
            starts.append(start)
            ends.append(end)
            owner.append(i)
    stack = lambda name: np.stack([getattr(w, name) for w in rows]).astype(np.int64)  # noqa: E731
    types = stack("token_type_ids") if "token_type_ids" in tokenizer.model_input_names else None
    return Features(
        stack("input_ids"), stack("attention_mask"), types, np.array(starts), np.array(ends), np.array(owner)
    )


def answer_tokens(window, example: Labelled, cls_token_id: int) -> tuple[int, int]:
    """The window's token positions of the answer's first and last characters; the [CLS] token's for both
    when the window does not hold the whole answer or the question has none (run_qa.py)."""
    ids = list(window.input_ids)
    cls = ids.index(cls_token_id) if cls_token_id in ids else 0
    if example.answer_start is None:
        return cls, cls
    start_char, end_char = example.answer_start, example.answer_start + len(example.answer_text)
    seq, offsets = window.sequence_ids, window.offsets
    first = seq.index(1)
    last = len(seq) - 1 - seq[::-1].index(1)
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return cls, cls
    while first < len(offsets) and offsets[first][0] <= start_char:
        first += 1
    while offsets[last][1] >= end_char:
        last -= 1
    return first - 1, last + 1


def step_rows(step: int, micro: int, job: TrainJob, n_features: int) -> np.ndarray:
    """The feature indices of micro-batch `micro` of optimizer step `step`: the next batch_size features of
    the stream of epochs, each epoch a permutation drawn from (seed, epoch), or file order."""
    first = (step * job.gradient_accumulation_steps + micro) * job.batch_size
    positions = np.arange(first, first + job.batch_size)
    epochs, within = np.divmod(positions, n_features)
    orders = {e: epoch_order(int(e), job, n_features) for e in np.unique(epochs)}
    return np.array([orders[e][i] for e, i in zip(epochs, within)])


def epoch_order(epoch: int, job: TrainJob, n_features: int) -> np.ndarray:
    if not job.shuffle:
        return np.arange(n_features)
    return np.random.default_rng([job.seed, epoch]).permutation(n_features)


def total_steps(job: TrainJob, n_features: int) -> int:
    if job.max_steps is not None:
        return job.max_steps
    per_step = job.batch_size * job.gradient_accumulation_steps
    return max(1, int(np.ceil(n_features * job.epochs / per_step)))


# --- the loss ----------------------------------------------------------------------------------------------


def kl_distillation(student, teacher, temperature):  # [B, S], [B, S] -> loss, d student [B, S]
    """KLDivLoss(reduction="batchmean")(log_softmax(student / T), softmax(teacher / T)) x T^2, and its
    gradient wrt the student's logits: (softmax(student / T) - softmax(teacher / T)) x T / B."""
    T = student.dtype.type(temperature)
    log_p = log_softmax(student / T)
    log_q = log_softmax(teacher.astype(student.dtype) / T)
    q = np.exp(log_q)
    B = student.shape[0]
    loss = (q * (log_q - log_p)).sum() / B * T * T
    return loss, ((np.exp(log_p) - q) * (T / B)).astype(student.dtype)


def log_softmax(x):  # [B, S] -> [B, S]
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def student_loss(start, end, start_positions, end_positions, teacher, job: TrainJob, scale=1.0):
    """The loss of one micro-batch and its gradients wrt the start and end logits, times `scale` (1 over the
    accumulation steps, as the script divides the loss before its backward). teacher: its (start, end)
    logits, or None."""
    loss, d_start, d_end = qa_loss(start, end, start_positions, end_positions)
    if teacher is not None:
        ce_start, g_start = kl_distillation(start, teacher[0], job.temperature)
        ce_end, g_end = kl_distillation(end, teacher[1], job.temperature)
        a_ce, a_squad = start.dtype.type(job.alpha_ce), start.dtype.type(job.alpha_squad)
        loss = a_ce * (ce_start + ce_end) / 2 + a_squad * loss
        d_start = a_ce * g_start / 2 + a_squad * d_start
        d_end = a_ce * g_end / 2 + a_squad * d_end
    s = start.dtype.type(scale)
    return loss * s, d_start * s, d_end * s


# --- the run -----------------------------------------------------------------------------------------------


def trainable(name: str, config: Config) -> bool:
    """Every weight but DistilBERT's sinusoidal position table, which transformers freezes (requires_grad off)."""
    return not (config.sinusoidal_pos_embds and name == "embeddings.position_embeddings.weight")


def train(job: TrainJob, resume: bool = False, progress_file=None) -> dict:
    """Run the job (see the module docstring); returns a summary: steps, the last loss, the output folder."""
    job.check()
    out = Path(job.out)
    with output_lock(out, LOCK, "train"):
        return _train_locked(job, out, resume, progress_file)


def _train_locked(job: TrainJob, out: Path, resume: bool, progress_file) -> dict:
    dtype = np.dtype(job.dtype)
    folder = hub.resolve(job.model)
    config = Config.from_file(folder / "config.json")
    tokenizer = Tokenizer.from_folder(folder, config.model_type)
    examples = labelled_examples(squad.read_dataset(job.data))
    features = training_features(tokenizer, examples, job.max_seq_len, job.doc_stride)
    teacher = load_teacher(job, tokenizer, dtype)
    # writable copies of the loader's arrays (read-only memory maps in float32)
    params = {name: np.array(a, dtype=dtype) for name, a in W.load_arrays(folder, config, dtype).items()}
    optimizer = AdamW({n: p for n, p in params.items() if trainable(n, config)}, weight_decay=job.weight_decay)
    # The dropout's generator, seeded; its state is saved with the weights, so a resumed run draws on.
    dropout = Dropout(config, np.random.default_rng(job.seed)) if job.dropout else None
    fingerprint = job_fingerprint(job, folder, len(features.input_ids))
    state_path, log_path = out / STATE, out / LOG
    start = 0
    if state_path.exists():
        if not resume:
            raise JobError(f"{out} holds a training state ({STATE}): pass --resume to continue it, or another --out")
        start = read_state(state_path, fingerprint, params, optimizer, dropout)
    elif resume and log_path.exists():
        raise JobError(f"{out}: --resume, but no {STATE} to resume from")
    keep_log_lines(log_path, start)
    keep_log_lines(out / EVAL_LOG, start, by_step=True)
    steps = total_steps(job, len(features.input_ids))
    ops = select_kernels()  # numba unless NPBERT_KERNELS says otherwise
    signals = Signals()
    last = drawn = None
    from tqdm import tqdm

    bar = tqdm(total=steps, initial=start, unit="step", disable=not job.progress, file=progress_file or sys.stderr)
    with signals.installed(), bar, open(log_path, "a", encoding="utf-8") as log:
        step = start
        try:
            while step < steps:
                # where the dropout generator stands at this step's start: what a stop during the step saves
                drawn = None if dropout is None else dropout.rng.bit_generator.state
                lr = linear_schedule_with_warmup(step, job.learning_rate, job.warmup_steps, steps)
                loss, grads = step_gradients(step, job, params, config, ops, features, teacher, dropout)
                with signals.critical():
                    clip_grad_norm({n: grads[n] for n in optimizer.state["exp_avg"]}, job.max_grad_norm)
                    optimizer.step({n: params[n] for n in optimizer.state["exp_avg"]}, grads, lr)
                    step += 1
                    log.write(json.dumps({"step": step, "loss": float(loss), "learning_rate": lr}) + "\n")
                    log.flush()
                    if step % job.save_steps == 0 and step < steps:
                        write_state(state_path, fingerprint, step, params, optimizer, dropout)
                if job.eval_data and job.eval_steps and step % job.eval_steps == 0 and step < steps:
                    checkpoint = out / f"checkpoint-{step}"
                    checkpoint.mkdir(exist_ok=True)
                    save_model(checkpoint, folder, params, config, dtype)
                    score_model(checkpoint, job, step, out / EVAL_LOG)
                last = float(loss)
                bar.set_postfix(loss=f"{last:.4f}")
                bar.update(1)
        except Interrupted as stop:
            if dropout is not None and drawn is not None:
                dropout.rng.bit_generator.state = drawn  # the unfinished step is run again, drawing the same
            with signals.critical():
                write_state(state_path, fingerprint, step, params, optimizer, dropout)
            stop.done, stop.total, stop.saved = step, steps, state_path
            raise
    save_model(out, folder, params, config, dtype)
    state_path.unlink(missing_ok=True)
    summary = {"steps": steps, "loss": last, "output": str(out)}
    if job.eval_data:
        summary["eval"] = score_model(out, job, steps, out / EVAL_LOG)
    return summary


def score_model(folder: Path, job: TrainJob, step: int, log: Path) -> dict:
    """npbert eval of a saved model on job.eval_data (its files in folder/eval); the score is also appended
    to `log` as {"step", ...score}."""
    from .evaluate import make_job, run, score_of

    metrics = run(
        make_job(
            {"model": str(folder), "data": job.eval_data, "output": str(folder / "eval"), "progress": job.progress}
        )
    )
    score = score_of(metrics)
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, **score}) + "\n")
    return score


def step_gradients(step, job, params, config, ops, features, teacher, dropout=None):
    """The loss of optimizer step `step` and its gradients, summed over the accumulation's micro-batches."""
    tree = W.build_tree(params, config)
    total, grads = 0.0, {}
    for micro in range(job.gradient_accumulation_steps):
        rows = step_rows(step, micro, job, len(features.input_ids))
        types = None if features.token_type_ids is None else features.token_type_ids[rows]
        ids, keep, types = prepare_inputs(features.input_ids[rows], features.attention_mask[rows], config, types)
        taught = None
        if teacher is not None:
            out = teacher(ids, keep.astype(np.int64), types if teacher.config.type_vocab_size else None)
            taught = (out.start_logits, out.end_logits)

        def upstream(start, end, rows=rows, taught=taught):
            scale = 1.0 / job.gradient_accumulation_steps
            return student_loss(
                start, end, features.start_positions[rows], features.end_positions[rows], taught, job, scale
            )

        with threads.for_model_call():
            g = forward_backward(ids, types, keep, tree, tree, config, ops, upstream, dropout=dropout)
        total += float(g.loss)
        for name, grad in g.weights.items():
            grads[name] = grads[name] + grad if name in grads else grad
    return total, grads


def load_teacher(job: TrainJob, tokenizer: Tokenizer, dtype):
    """The teacher model (forward only), refused unless it tokenizes as the student does."""
    if job.teacher is None:
        return None
    folder = hub.resolve(job.teacher)
    teacher = AutoModelForQuestionAnswering.from_pretrained(folder, dtype=dtype)
    theirs = Tokenizer.from_folder(folder, teacher.config.model_type)
    if theirs.backend.get_vocab() != tokenizer.backend.get_vocab():
        raise JobError(f"teacher {job.teacher}: its tokenizer's vocabulary is not the student's")
    return teacher


# --- files -------------------------------------------------------------------------------------------------


def job_fingerprint(job: TrainJob, folder: Path, n_features: int) -> dict:
    settings = dataclasses.asdict(job)
    for name in ("out", "progress", "save_steps"):  # where and how it runs, not what it computes
        settings.pop(name)
    settings["model_sha256"] = hub.sha256_file(folder / "model.safetensors")
    settings["data_sha256"] = hub.sha256_file(Path(job.data))
    settings["features"] = n_features
    return settings


def state_digest(arrays: dict, meta: dict) -> str:
    """The sha256 of a state's arrays and of its header's other entries: any changed byte is found."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def write_state(path: Path, fingerprint: dict, step: int, params: dict, optimizer: AdamW, dropout=None) -> None:
    """The run's state after `step` optimizer steps, atomically (a temporary file, fsync'ed, renamed)."""
    from safetensors.numpy import save_file

    arrays = {f"param/{n}": p for n, p in params.items()}
    arrays.update({f"exp_avg/{n}": m for n, m in optimizer.state["exp_avg"].items()})
    arrays.update({f"exp_avg_sq/{n}": v for n, v in optimizer.state["exp_avg_sq"].items()})
    meta = {
        "format": STATE_FORMAT,
        "step": str(step),
        "optimizer_step": str(optimizer.state["step"]),
        "fingerprint": json.dumps(fingerprint, sort_keys=True),
        "dropout_generator": json.dumps(None if dropout is None else dropout.rng.bit_generator.state),
    }
    meta["sha256"] = state_digest(arrays, meta)
    tmp = path.with_name(path.name + ".tmp")
    save_file({n: np.ascontiguousarray(a) for n, a in arrays.items()}, str(tmp), metadata=meta)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state(path: Path, fingerprint: dict, params: dict, optimizer: AdamW, dropout=None) -> int:
    """Restore params and the optimizer from a state file (in place); returns its step. A file that is not
    whole, or that another job wrote, is refused with a JobError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a damaged header or data
        raise JobError(f"{path}: damaged training state, not used ({str(e).splitlines()[0][:120]})") from None
    if meta.get("format") != STATE_FORMAT:
        raise JobError(f"{path}: not an npbert training state of format {STATE_FORMAT}")
    if meta.get("sha256") != state_digest(arrays, meta):
        raise JobError(f"{path}: damaged training state (its content does not match the sha256 in its header)")
    if json.loads(meta.get("fingerprint", "{}")) != json.loads(json.dumps(fingerprint, sort_keys=True)):
        raise JobError(f"{path}: the state of another job (model, data or settings differ): use another --out")
    for name, p in params.items():
        p[...] = arrays[f"param/{name}"]
    for name in optimizer.state["exp_avg"]:
        optimizer.state["exp_avg"][name][...] = arrays[f"exp_avg/{name}"]
        optimizer.state["exp_avg_sq"][name][...] = arrays[f"exp_avg_sq/{name}"]
    optimizer.state["step"] = int(meta["optimizer_step"])
    if dropout is not None:
        dropout.rng.bit_generator.state = json.loads(meta["dropout_generator"])
    return int(meta["step"])


def keep_log_lines(path: Path, steps: int, by_step: bool = False) -> None:
    """log.jsonl cut to its first `steps` lines (eval.jsonl, by_step: to its lines of step <= steps): the
    steps after the saved state are run again. A line cut short by a kill is dropped."""
    if not path.exists():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True) if line.endswith("\n")]
    if by_step:
        lines = [line for line in lines if json.loads(line)["step"] <= steps]
    write_atomic(path, "".join(lines[:steps] if not by_step else lines))


def save_model(out: Path, folder: Path, params: dict, config: Config, dtype) -> None:
    """model.safetensors (checkpoint keys, float32 as transformers saves by default; float64 runs keep
    float64), config.json and the tokenizer files, each written atomically."""
    from safetensors.numpy import save_file

    keys = W.canonical_keys(config)
    tensors = {keys[n]: np.ascontiguousarray(p) for n, p in params.items()}
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")
    settings = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    settings["torch_dtype"] = np.dtype(dtype).name
    write_atomic(out / "config.json", json.dumps(settings, indent=2, sort_keys=True) + "\n")
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)
