"""What a training step does after the backward, in numpy, as PyTorch 2.13 and transformers 4.57.6 do it:
AdamW (`torch.optim.AdamW`, decoupled weight decay), the linear schedule with warm-up
(`transformers.get_linear_schedule_with_warmup` over `torch.optim.lr_scheduler.LambdaLR`), gradient clipping
by the global L2 norm (`torch.nn.utils.clip_grad_norm_`) and the Trainer's weight-decay groups
(`Trainer.get_decay_parameter_names`: no decay on biases and LayerNorm parameters).

Parameters and gradients are dicts of numpy arrays keyed by canonical weight names (model.Gradients.weights),
updated in place; the optimizer's state (the moments and the step count) is a plain dict of arrays too, so it
can be saved and read back exactly.
"""

from __future__ import annotations

import math

import numpy as np


def decays(name: str) -> bool:
    """Whether a weight gets weight decay: not a bias, not a LayerNorm's parameter (the Trainer's grouping:
    parameters of LayerNorm modules and names matching bias / layernorm / norm are left out)."""
    lowered = name.lower()
    return not (name.endswith(".bias") or "layernorm" in lowered or "layer_norm" in lowered)


class AdamW:
    """torch.optim.AdamW (amsgrad off, not maximising), one learning rate for every parameter and weight
    decay where `decays(name)`. `step(params, grads, lr)` updates params in place."""

    def __init__(self, params: dict, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.state = {
            "step": 0,
            "exp_avg": {n: np.zeros_like(p) for n, p in params.items()},
            "exp_avg_sq": {n: np.zeros_like(p) for n, p in params.items()},
        }

    def step(self, params: dict, grads: dict, lr: float) -> None:
        beta1, beta2 = self.betas
        self.state["step"] += 1
        t = self.state["step"]
        bias_correction1 = 1 - beta1**t
        bias_correction2_sqrt = math.sqrt(1 - beta2**t)
        step_size = lr / bias_correction1
        for name, p in params.items():
            g = grads[name]
            m, v = self.state["exp_avg"][name], self.state["exp_avg_sq"][name]
            if self.weight_decay and decays(name):
                p *= 1 - lr * self.weight_decay  # decoupled: the weights shrink, the moments never see it
            m += (g - m) * (1 - beta1)  # torch's lerp
            v *= beta2
            v += (1 - beta2) * g * g
            p -= step_size * (m / (np.sqrt(v) / bias_correction2_sqrt + self.eps))


def linear_schedule_with_warmup(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based): rising linearly from 0 over the warm-up, then
    falling linearly to 0 at total_steps."""
    # base_lr times the factor, as LambdaLR multiplies them (the same rounding)
    if step < warmup_steps:
        return base_lr * (step / max(1, warmup_steps))
    return base_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale every gradient by max_norm / (total norm + 1e-6), at most 1 (in place); returns the total L2
    norm before clipping, as clip_grad_norm_ (the norm of the per-tensor norms)."""
    dtype = next(iter(grads.values())).dtype  # torch computes the norms in the gradients' dtype
    total = float(np.linalg.norm(np.asarray([np.linalg.norm(g.reshape(-1)) for g in grads.values()], dtype=dtype)))
    coef = min(max_norm / (total + 1e-6), 1.0)
    for g in grads.values():
        g *= g.dtype.type(coef)
    return total
