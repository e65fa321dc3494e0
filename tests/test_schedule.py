"""SGDR per iteration against torch's CosineAnnealingWarmRestarts(T_0=iters_per_epoch, T_mult=2)."""

import pytest
import torch

from fastprod.config import ScheduleConfig
from fastprod.schedule import SGDR


@pytest.mark.parametrize("iters, lr_min", [(7, 0.0), (13, 1e-4)])
def test_matches_torch_warm_restarts(iters, lr_min):
    base = 0.4
    sgdr = SGDR(ScheduleConfig(epochs=15, cycle_epochs=1, cycle_mult=2, lr_min=lr_min), base, iters)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=iters, T_mult=2, eta_min=lr_min)
    for step in range(15 * iters):
        assert sgdr.lr(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12), step
        opt.step()
        ref.step()


def test_cycle_ends_after_epochs_1_3_7_15():
    iters = 5
    sgdr = SGDR(ScheduleConfig(epochs=15), 0.1, iters)
    ends = [s + 1 for s in range(15 * iters) if sgdr.is_cycle_end(s)]
    assert ends == [e * iters for e in (1, 3, 7, 15)]
    assert [sgdr.cycle(e - 1) for e in ends] == [0, 1, 2, 3]
