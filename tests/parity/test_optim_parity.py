"""npbert/optim.py against PyTorch 2.13 and transformers 4.57.6 on the same random parameters and gradients:
torch.optim.AdamW (two parameter groups: weight decay and none, as the Trainer makes them),
get_linear_schedule_with_warmup and clip_grad_norm_, 12 steps, float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest

from npbert import optim

torch = pytest.importorskip("torch", reason="torch (the parity extra) is not installed")
transformers = pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")

NAMES = {
    "transformer.layer.0.attention.q_lin.weight": (6, 5),
    "transformer.layer.0.attention.q_lin.bias": (6,),
    "transformer.layer.0.sa_layer_norm.weight": (5,),
    "embeddings.LayerNorm.weight": (5,),
    "embeddings.word_embeddings.weight": (9, 5),
    "qa_outputs.weight": (2, 5),
}


def test_decay_groups_follow_the_trainer():
    assert [n for n in NAMES if optim.decays(n)] == [
        "transformer.layer.0.attention.q_lin.weight",
        "embeddings.word_embeddings.weight",
        "qa_outputs.weight",
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_norm", [1.0, 1e6])  # clipping every step; never clipping (the factor is then 1)
def test_adamw_schedule_and_clipping_equal_torch(dtype, max_norm):
    rng = np.random.default_rng(0)
    params = {n: rng.standard_normal(s).astype(dtype) for n, s in NAMES.items()}
    theirs = {n: torch.tensor(p.copy(), requires_grad=True) for n, p in params.items()}
    lr, warmup, total = 3e-3, 4, 12
    groups = [
        {"params": [theirs[n] for n in NAMES if optim.decays(n)], "weight_decay": 0.05},
        {"params": [theirs[n] for n in NAMES if not optim.decays(n)], "weight_decay": 0.0},
    ]
    t_opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    t_sched = transformers.get_linear_schedule_with_warmup(t_opt, warmup, total)
    ours = optim.AdamW(params, weight_decay=0.05)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for step in range(total):
        grads = {n: (3 * rng.standard_normal(s)).astype(dtype) for n, s in NAMES.items()}
        for n, p in theirs.items():
            p.grad = torch.tensor(grads[n].copy())
        t_norm = float(torch.nn.utils.clip_grad_norm_(list(theirs.values()), max_norm))
        norm = optim.clip_grad_norm(grads, max_norm)
        assert norm == pytest.approx(t_norm, rel=tol)
        rate = optim.linear_schedule_with_warmup(step, lr, warmup, total)
        assert rate == t_sched.get_last_lr()[0]
        ours.step(params, grads, rate)
        t_opt.step()
        t_sched.step()
        for n, p in params.items():
            theirs_p = theirs[n].detach().numpy()
            diff = np.abs(p - theirs_p).max() / np.abs(theirs_p).max()
            assert diff <= tol, f"step {step}: {n} max|diff| {diff:.2e} relative"
