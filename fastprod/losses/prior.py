"""Logit adjustment (Menon et al., ICLR 2021, "Long-tail learning via logit adjustment"): the per-class offset
tau * log(prior) that `loss.logit_adjust_tau` adds to the logits inside the loss, the prior being the training
split's class frequencies. With tau = 1 this is balanced softmax (Ren et al., NeurIPS 2020)."""

from __future__ import annotations

import torch


def logit_offset(class_counts: torch.Tensor, tau: float) -> torch.Tensor | None:
    """tau * log(prior) as float32 [C], prior = class_counts / their sum, or None for tau = 0 (no adjustment).

    A class with no training image counts as one (its log-prior is log(1 / N), the rarest a seen class can be,
    instead of -inf): its offset stays finite, and the loss still pushes its logit down like a rare class's."""
    if not tau:
        return None
    counts = torch.as_tensor(class_counts, dtype=torch.float64).clamp(min=1)
    return (tau * (counts / counts.sum()).log()).to(torch.float32)
