"""What the training parity test (tests/parity/test_train_parity.py) and the stored training fixture
(tools/make_train_reference.py, tests/test_train_fixture.py) share: the data, and a job's steps written in
PyTorch as transformers' examples write them (run_qa.py with the Trainer's AdamW groups, the linear
schedule, clip_grad_norm_; run_squad_w_distillation.py's loss; gradient accumulation by dividing the
loss)."""

from __future__ import annotations

import json
from pathlib import Path

from npbert import optim, train

CONTEXT = (
    "My name is John and I live in Seattle . The river is in Paris and the first city is Rome . "
    "The team won the game in the year one and Paris played Rome ."
)
QUESTIONS = [
    ("What's my name?", "John"),
    ("where I live?", "Seattle"),
    ("which city river?", "Paris"),
    ("the first city?", "Rome"),
    ("who won the game?", "The team"),
    ("when was the game?", "the year one"),
]


def data_file(folder: Path) -> Path:
    qas = [
        {"id": str(i), "question": q, "answers": [{"text": a, "answer_start": CONTEXT.index(a)}]}
        for i, (q, a) in enumerate(QUESTIONS)
    ]
    path = folder / "train.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"paragraphs": [{"context": CONTEXT, "qas": qas}]}]}))
    return path


def torch_run(job: train.TrainJob, model, features: train.Features, teacher=None, dtype=None):
    """The job's steps in PyTorch. Returns the loss of every step and the final parameters by name."""
    import torch
    import transformers

    dtype = dtype or torch.float64
    model = model.to(dtype).train()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if optim.decays(n)], "weight_decay": job.weight_decay},
        {"params": [p for n, p in trainable if not optim.decays(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=job.learning_rate)
    schedule = transformers.get_linear_schedule_with_warmup(opt, job.warmup_steps, job.max_steps)
    if teacher is not None:
        teacher = teacher.to(dtype).eval()
    kl = torch.nn.KLDivLoss(reduction="batchmean")
    T = job.temperature
    losses = []
    for step in range(job.max_steps):
        total = 0.0
        for micro in range(job.gradient_accumulation_steps):
            rows = train.step_rows(step, micro, job, len(features.input_ids))
            inputs = {
                "input_ids": torch.from_numpy(features.input_ids[rows]),
                "attention_mask": torch.from_numpy(features.attention_mask[rows]),
            }
            out = model(
                **inputs,
                start_positions=torch.from_numpy(features.start_positions[rows]),
                end_positions=torch.from_numpy(features.end_positions[rows]),
            )
            loss = out.loss
            if teacher is not None:  # run_squad_w_distillation.py's lines
                with torch.no_grad():
                    t = teacher(**inputs)
                loss_start = kl(
                    torch.nn.functional.log_softmax(out.start_logits / T, dim=-1),
                    torch.nn.functional.softmax(t.start_logits / T, dim=-1),
                ) * (T**2)
                loss_end = kl(
                    torch.nn.functional.log_softmax(out.end_logits / T, dim=-1),
                    torch.nn.functional.softmax(t.end_logits / T, dim=-1),
                ) * (T**2)
                loss = job.alpha_ce * (loss_start + loss_end) / 2.0 + job.alpha_squad * loss
            loss = loss / job.gradient_accumulation_steps
            loss.backward()
            total += float(loss)
        torch.nn.utils.clip_grad_norm_([p for _, p in trainable], job.max_grad_norm)
        opt.step()
        schedule.step()
        model.zero_grad()
        losses.append(total)
    return losses, {n: p.detach().numpy() for n, p in model.named_parameters()}
