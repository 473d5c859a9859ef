"""npbert train, step for step against PyTorch (issue 25, item 4): for a tiny checkpoint of every family saved
by transformers, 20 steps of `npbert.train.train` against the same steps written as transformers'
examples do them (the transformers model in train mode with dropout 0, torch.optim.AdamW with the
Trainer's two parameter groups, get_linear_schedule_with_warmup, clip_grad_norm_, the distillation loss
as run_squad_w_distillation.py writes it, gradient accumulation by dividing the loss), fed the same
features: the loss at every step within 1e-9 relative in float64 and 1e-4 in float32, and every weight
after the last step within 1e-9 / 1e-4 of that tensor's max |value|.

In float32, a weight whose gradient is zero in exact arithmetic (every key bias: softmax ignores a
constant added to a row; qa_outputs.bias and, with the loss over every position, whatever only shifts all
logits alike) moves by rounding noise that AdamW divides by its own size, so both runs move it by up to
the learning rate per step, in directions neither controls: those tensors (found as the ones with a zero
float64 gradient) are held to lr x steps instead, and the table says so. In float64 the noise (1e-16) is
far below AdamW's eps (1e-8): they move by at most 1e-6 of that.

Also: training's dropout equals torch's in train mode given the same masks (torch's dropout replaced by
one that multiplies by the masks npbert drew, in call order), and the training features equal
run_qa.py's prepare_train_features run with transformers' tokenizer on the same folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from checkpoints import generated_vocab, write_tokenizer
from npbert import model as M, squad, train
from npbert.tokenizer import Tokenizer
from parity_helpers import family_checkpoint
from train_helpers import QUESTIONS, data_file, torch_run

torch = pytest.importorskip("torch", reason="torch (the parity extra) is not installed")
transformers = pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")

VOCAB = generated_vocab()
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
BERT_LIKE = dict(hidden_size=16, num_attention_heads=2, intermediate_size=24, num_hidden_layers=2)
FAMILIES = {
    "distilbert": dict(
        dim=16, n_heads=2, hidden_dim=24, n_layers=2, dropout=0.0, attention_dropout=0.0, qa_dropout=0.0
    ),
    "bert": dict(**BERT_LIKE, **NO_DROPOUT),
    "roberta": dict(**BERT_LIKE, **NO_DROPOUT, pad_token_id=1, type_vocab_size=1, max_position_embeddings=66),
    "xlm-roberta": dict(**BERT_LIKE, **NO_DROPOUT, pad_token_id=1, type_vocab_size=1, max_position_embeddings=66),
    "electra": dict(**BERT_LIKE, **NO_DROPOUT, embedding_size=8),
    "albert": dict(
        **{**BERT_LIKE, "num_hidden_layers": 4}, **NO_DROPOUT, embedding_size=8, num_hidden_groups=2, inner_group_num=2
    ),
    "deberta-v2": dict(
        **BERT_LIKE,
        **NO_DROPOUT,
        relative_attention=True,
        position_buckets=8,
        pos_att_type=["p2c", "c2p"],
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        position_biased_input=False,
        type_vocab_size=0,
        layer_norm_eps=1e-7,
    ),
}
STEPS, LR, WARMUP, DECAY = 20, 3e-3, 4, 0.01


def checkpoint(folder: Path, model_type: str, seed: int = 0, **extra):
    """A transformers-saved tiny checkpoint of the family with a WordPiece tokenizer beside it, and the
    torch model."""
    config = {**FAMILIES[model_type], "initializer_range": 0.2, "vocab_size": len(VOCAB), **extra}
    folder, model = family_checkpoint(folder, model_type, seed, **config)
    write_tokenizer(folder, VOCAB)
    return folder, model


def zero_gradient_tensors(model, features, job) -> set:
    """The parameters whose float64 gradient on the first batch is zero up to rounding."""
    model = model.to(torch.float64).train()
    rows = train.step_rows(0, 0, job, len(features.input_ids))
    out = model(
        input_ids=torch.from_numpy(features.input_ids[rows]),
        attention_mask=torch.from_numpy(features.attention_mask[rows]),
        start_positions=torch.from_numpy(features.start_positions[rows]),
        end_positions=torch.from_numpy(features.end_positions[rows]),
    )
    out.loss.backward()
    grads = {n: p.grad.abs().max().item() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    largest = max(grads.values())
    return {n for n, g in grads.items() if g <= 1e-12 * largest}


def compare(tmp_path, model_type, dtype="float64", teacher=False, accumulation=1):
    folder, model = checkpoint(tmp_path / "student", model_type)
    teacher_folder = teacher_model = None
    if teacher:
        teacher_folder, teacher_model = checkpoint(tmp_path / "teacher", model_type, seed=7)
    job = train.TrainJob(
        model=str(folder),
        data=str(data_file(tmp_path)),
        out=str(tmp_path / "out"),
        max_steps=STEPS,
        batch_size=3,
        gradient_accumulation_steps=accumulation,
        learning_rate=LR,
        warmup_steps=WARMUP,
        weight_decay=DECAY,
        shuffle=False,
        dropout=False,
        dtype=dtype,
        max_seq_len=40,
        doc_stride=12,
        teacher=None if teacher_folder is None else str(teacher_folder),
        progress=False,
    )
    tokenizer = Tokenizer.from_folder(folder)
    features = train.training_features(
        tokenizer, train.labelled_examples(squad.read_dataset(job.data)), job.max_seq_len, job.doc_stride
    )
    assert len(features.input_ids) > len(QUESTIONS)  # the context makes several windows
    zero = zero_gradient_tensors(model, features, job)
    train.train(job)
    theirs_losses, theirs = torch_run(
        job, model, features, teacher_model, torch.float64 if dtype == "float64" else torch.float32
    )
    ours_losses = [json.loads(line)["loss"] for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    from safetensors.numpy import load_file

    ours = load_file(str(tmp_path / "out" / "model.safetensors"))
    tol = 1e-9 if dtype == "float64" else 1e-4
    lines, failed = [f"{model_type} {dtype} teacher={teacher} accumulation={accumulation}"], []
    for step, (a, b) in enumerate(zip(ours_losses, theirs_losses)):
        rel = abs(a - b) / abs(b)
        if not rel <= tol:
            failed.append(f"step {step + 1} loss {a!r} vs torch {b!r}: {rel:.2e} relative")
    assert len(ours_losses) == len(theirs_losses) == STEPS
    for name, value in theirs.items():
        scale = np.abs(value).max()
        diff = float(np.abs(ours[name].astype(np.float64) - value).max())
        # a zero-gradient tensor moves by AdamW's steps on rounding noise: up to LR a step in float32, and
        # noise / eps of it in float64 (1e-16 / 1e-8)
        limit = tol * scale if name not in zero else LR * STEPS * (1.0 if dtype == "float32" else 1e-6)
        mark = "" if diff <= limit else "  <-- over"
        lines.append(f"{name:<70} {diff / scale:10.2e}{' (zero gradient)' if name in zero else ''}{mark}")
        if mark:
            failed.append(name)
    assert not failed, "\n".join(failed + lines)


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_twenty_steps_equal_pytorch_float64(tmp_path, model_type):
    compare(tmp_path, model_type)


@pytest.mark.parametrize("model_type", ["distilbert", "bert", "albert"])
def test_twenty_steps_equal_pytorch_float32(tmp_path, model_type):
    compare(tmp_path, model_type, "float32")


@pytest.mark.parametrize("model_type", ["distilbert", "electra"])
def test_distillation_equals_the_scripts_loss(tmp_path, model_type):
    compare(tmp_path, model_type, teacher=True)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_gradient_accumulation(tmp_path, model_type):
    compare(tmp_path, model_type, accumulation=3)


# --- dropout -----------------------------------------------------------------------------------------------

DROPPING = {
    "distilbert": dict(dropout=0.3, attention_dropout=0.2, qa_dropout=0.4),
    "bert": dict(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.25),
    "roberta": dict(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.25),
    "electra": dict(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.25),
    "albert": dict(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.25),
    "deberta-v2": dict(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.25),
}


@pytest.mark.parametrize("model_type", list(DROPPING))
def test_dropout_sites_equal_torchs_train_mode(tmp_path, model_type, monkeypatch):
    folder, theirs = checkpoint(tmp_path / "m", model_type, **DROPPING[model_type])
    theirs = theirs.to(torch.float64).train()
    import npbert

    ours = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=np.float64)
    rng = np.random.default_rng(3)
    lengths = [9, 6, 4]
    ids = rng.integers(5, len(VOCAB), size=(3, 9))
    mask = (np.arange(9)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, ours.config.pad_token_id)
    starts, ends = np.array([1, 2, 3]), np.array([4, 2, 0])
    masks = []

    class Recording(M.Dropout):
        def __call__(self, x, tap, site, key=None):
            y = super().__call__(x, tap, site, key)
            if y is not x:
                masks.append(tap[key or site + ".dropout"])
            return y

    keep = mask.astype(bool)
    upstream = M.upstream_gradients(keep.shape, starts, ends, None, None)
    plain = ours.checkpoint_weights
    g = M.forward_backward(
        ids,
        None if ours.config.type_vocab_size == 0 else np.zeros_like(ids),
        keep,
        plain,
        plain,
        ours.config,
        ours.ops,
        upstream,
        dropout=Recording(ours.config, np.random.default_rng(5)),
    )
    queue = list(masks)
    runs = ours.config.n_block_runs  # ALBERT: 4 layers of 2 inner blocks each
    # DeBERTa: every layer also drops its copy of the relative-position table
    per_run = {"distilbert": 2, "albert": 2, "deberta-v2": 4}.get(model_type, 3)
    expected_sites = 1 + per_run * runs + (model_type == "distilbert")
    assert len(masks) == expected_sites  # every site of the family, once per layer (ALBERT: per block run)

    def injected(input, p=0.5, training=True, inplace=False):
        return input * torch.from_numpy(queue.pop(0)) if training and p > 0 else input

    monkeypatch.setattr(torch.nn.functional, "dropout", injected)
    out = theirs(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        start_positions=torch.from_numpy(starts),
        end_positions=torch.from_numpy(ends),
    )
    out.loss.backward()
    assert not queue  # torch dropped at exactly as many places
    assert float(g.loss) == pytest.approx(float(out.loss), rel=1e-12)
    params = dict(theirs.named_parameters())
    largest = max(p.grad.abs().max().item() for p in params.values() if p.grad is not None)
    for key, grad in g.named(ours.config).items():
        torch_grad = params[key].grad.numpy()
        assert np.abs(grad - torch_grad).max() <= 1e-9 * max(np.abs(torch_grad).max(), 1e-3 * largest), key


# --- features ----------------------------------------------------------------------------------------------


def prepare_train_features(tokenizer, questions, contexts, answers, max_seq_length, doc_stride):
    """run_qa.py's prepare_train_features (transformers examples/pytorch/question-answering, v4.57.6),
    pad_on_right, pad_to_max_length, copied with only the datasets plumbing removed."""
    questions = [q.lstrip() for q in questions]
    tokenized = tokenizer(
        questions,
        contexts,
        truncation="only_second",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    offset_mapping = tokenized.pop("offset_mapping")
    starts, ends = [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tokenized["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        sequence_ids = tokenized.sequence_ids(i)
        a = answers[sample_mapping[i]]
        if len(a["answer_start"]) == 0:
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        start_char = a["answer_start"][0]
        end_char = start_char + len(a["text"][0])
        token_start_index = 0
        while sequence_ids[token_start_index] != 1:
            token_start_index += 1
        token_end_index = len(input_ids) - 1
        while sequence_ids[token_end_index] != 1:
            token_end_index -= 1
        if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
            starts.append(cls_index)
            ends.append(cls_index)
        else:
            while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                token_start_index += 1
            starts.append(token_start_index - 1)
            while offsets[token_end_index][1] >= end_char:
                token_end_index -= 1
            ends.append(token_end_index + 1)
    return np.array(tokenized["input_ids"]), np.array(starts), np.array(ends)


@pytest.mark.parametrize("max_seq_len, doc_stride", [(40, 12), (24, 4), (64, 16)])
def test_features_equal_run_qa(tmp_path, max_seq_len, doc_stride):
    folder = tmp_path / "tok"
    folder.mkdir()
    write_tokenizer(folder, VOCAB)
    (folder / "config.json").write_text(json.dumps({"model_type": "distilbert"}))
    theirs_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    examples = train.labelled_examples(squad.read_dataset(data_file(tmp_path)))
    ours = train.training_features(Tokenizer.from_folder(folder), examples, max_seq_len, doc_stride)
    answers = [{"text": [e.answer_text], "answer_start": [e.answer_start]} for e in examples]
    ids, starts, ends = prepare_train_features(
        theirs_tokenizer,
        [e.question for e in examples],
        [e.context for e in examples],
        answers,
        max_seq_len,
        doc_stride,
    )
    np.testing.assert_array_equal(ours.input_ids, ids)
    np.testing.assert_array_equal(ours.start_positions, starts)
    np.testing.assert_array_equal(ours.end_positions, ends)
