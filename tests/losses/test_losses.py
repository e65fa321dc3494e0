"""The plain torch losses against torch's own ops and float64 formulas, gradients included; the loss registry."""

import math
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastprod.config import A_OFFICIAL, A_PAPER, ConfigError, LossConfig
from fastprod.kernels.reference import LossParams
from fastprod.losses import create_loss, logit_offset, reference_loss


def inputs(b=9, c=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, c, (b,), generator=g)
    weights = torch.rand(b, generator=g, dtype=torch.float64) * 2
    return logits, target, weights


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.4])
def test_ce_and_label_smoothing_match_torch(smoothing):
    logits, target, _ = inputs()
    target[2] = -100
    out = reference_loss(logits, target, smoothing=smoothing)
    expected = F.cross_entropy(logits, target, label_smoothing=smoothing, reduction="none")
    torch.testing.assert_close(out.per_sample, expected)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, target, label_smoothing=smoothing))
    torch.testing.assert_close(out.ce, F.cross_entropy(logits, target, reduction="none"))


@pytest.mark.parametrize("A", [A_OFFICIAL, A_PAPER])
@pytest.mark.parametrize("alpha, beta", [(0.1, 1.0), (6.0, 0.1)])
def test_sce_matches_the_clamped_one_hot_formula(A, alpha, beta):
    logits, target, weights = inputs()
    out = reference_loss(logits, target, weights=weights, alpha=alpha, beta=beta, A=A)
    p = logits.softmax(-1)
    one_hot = F.one_hot(target, logits.shape[1]).double()
    rce = -(p * one_hot.clamp(min=math.exp(A)).log()).sum(-1)  # the official code's definition
    ce = -(one_hot * p.log()).sum(-1)
    expected = weights * (alpha * ce + beta * rce)
    torch.testing.assert_close(out.per_sample, expected)
    torch.testing.assert_close(out.loss, expected.mean())


@pytest.mark.parametrize("smoothing, beta", [(0.0, 1.0), (0.2, 0.5)])
def test_gradients(smoothing, beta):
    logits, target, weights = inputs(b=4, c=5)
    target[1] = -100
    logits.requires_grad_(True)

    def f(z):
        return reference_loss(z, target, weights=weights, smoothing=smoothing, alpha=0.7, beta=beta, A=A_PAPER).loss

    assert torch.autograd.gradcheck(f, (logits,))
    # closed form without smoothing: (alpha + beta (-A) p_y) (p - onehot) per row, times w / N_valid
    if smoothing == 0.0:
        f(logits).backward()
        p = logits.detach().softmax(-1)
        valid = target != -100
        t = target.clamp(min=0)
        p_y = p.gather(1, t[:, None])
        closed = (0.7 + beta * (-A_PAPER) * p_y) * (p - F.one_hot(t, 5)) * weights[:, None] / valid.sum()
        closed[~valid] = 0
        torch.testing.assert_close(logits.grad, closed)


def test_create_loss_from_config():
    logits, target, _ = inputs()
    ce = create_loss(LossConfig(name="ce", label_smoothing=0.1))(logits, target)
    torch.testing.assert_close(ce.loss, F.cross_entropy(logits, target, label_smoothing=0.1))
    sce = create_loss(LossConfig(name="sce", sce_alpha=0.5, sce_beta=2.0, sce_A=-4.0))(logits, target)
    p_y = logits.softmax(-1).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(sce.per_sample, 0.5 * F.cross_entropy(logits, target, reduction="none")
                               + 2.0 * 4.0 * (1 - p_y))


@pytest.mark.parametrize("impl", ["reference", "fused", "fused_linear"])
def test_ce_is_the_true_ce_whatever_the_weight(impl):
    """O2U records `ce`: every configured loss gives the true CE on rows of weight 0 and fractional weight,
    0 on ignored rows, while the loss and its gradient stay weight-scaled (float64 closed forms)."""
    g = torch.Generator().manual_seed(1)
    x, head = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    target = torch.tensor([3, 0, -100, 6, -100, 2])
    weights = torch.tensor([0.0, 0.25, 0.0, 1.5, 1.0, 0.0], dtype=torch.float64)
    x.requires_grad_()
    logits = x @ head.T
    fn = create_loss(LossConfig(impl=impl))
    out = fn(x, head, None, target, weights=weights) if impl == "fused_linear" else fn(logits, target, weights=weights)
    out.loss.backward()

    z = logits.detach()
    valid = target != -100
    y = target.clamp(min=0)
    ce = torch.where(valid, torch.logsumexp(z, 1) - z[torch.arange(6), y], 0.0)
    torch.testing.assert_close(out.ce, ce)
    torch.testing.assert_close(out.per_sample, weights * ce)
    torch.testing.assert_close(out.loss, (weights * ce).sum() / valid.sum())
    dz = (z.softmax(-1) - F.one_hot(y, 7)) * torch.where(valid, weights, 0.0)[:, None] / valid.sum()
    torch.testing.assert_close(x.grad, dz @ head)


def test_every_loss_is_registered_with_the_paths_that_implement_it():
    """The registry knows every loss a config may name and every path `loss.impl` may choose (its Literal)."""
    from fastprod.losses import LOSSES, PATHS

    assert {name: set(cls.impls) for name, cls in LOSSES.items()} == {"ce": set(PATHS), "sce": set(PATHS)}
    assert set(typing.get_args(typing.get_type_hints(LossConfig)["impl"])) == PATHS.keys()
    assert LossConfig().name in LOSSES


def test_an_unknown_loss_name_is_a_config_error():
    with pytest.raises(ConfigError, match="loss.name: 'focal' is not a registered loss"):
        create_loss(LossConfig(name="focal"))


@pytest.fixture
def reference_only_loss():
    """A loss registered for the plain torch path only (unregistered after the test)."""
    from fastprod.losses import LOSSES, Loss, register_loss

    @register_loss
    class ReferenceOnly(Loss):
        name, impls = "reference_only", ("reference",)

        @staticmethod
        def params_from(cfg):
            return LossParams(smoothing=cfg.label_smoothing)

    yield ReferenceOnly
    del LOSSES[ReferenceOnly.name]


@pytest.mark.parametrize("impl", ["fused", "fused_linear", "triton"])
def test_a_path_that_does_not_implement_the_loss_is_a_config_error(reference_only_loss, impl):
    """A loss only the plain torch path computes is refused on every other `loss.impl`, never computed as
    the alpha * CE + beta * RCE family the fused paths know."""
    logits, target, _ = inputs()
    out = create_loss(LossConfig(name="reference_only", label_smoothing=0.1))(logits, target)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, target, label_smoothing=0.1))
    with pytest.raises(ConfigError, match=f"loss.impl: '{impl}' does not implement loss.name 'reference_only'"):
        create_loss(LossConfig(name="reference_only", impl=impl))


def test_logit_offset_is_tau_log_prior_and_finite_for_empty_classes():
    """Logit adjustment's offset: tau * log(n_c / N) against numpy, a class without images counted as one image
    (finite), None for tau = 0."""
    counts = np.array([0, 3, 10, 87, 0, 1])
    offset = logit_offset(torch.as_tensor(counts), 1.5)
    seen = np.maximum(counts, 1)
    np.testing.assert_allclose(offset.numpy(), 1.5 * np.log(seen / seen.sum()), rtol=1e-6)
    assert offset.dtype == torch.float32 and torch.isfinite(offset).all()
    assert logit_offset(torch.as_tensor(counts), 0.0) is None


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_balanced_softmax_is_logit_adjustment_with_tau_1(smoothing):
    """tau = 1: -log(n_y e^{z_y} / sum_k n_k e^{z_k}) (Ren et al.'s balanced softmax, written out), with torch's
    label smoothing on z + log prior; the CE recorded for O2U is the plain logits' (torch's cross_entropy)."""
    logits, target, _ = inputs()
    counts = torch.arange(1, 14, dtype=torch.float64) ** 2
    out = reference_loss(logits, target, smoothing=smoothing, logit_offset=logit_offset(counts, 1.0))
    scaled = counts * logits.exp()
    balanced = -(scaled.gather(1, target[:, None]).squeeze(1) / scaled.sum(1)).log()
    adjusted = logits + (counts / counts.sum()).log()
    torch.testing.assert_close(out.per_sample, F.cross_entropy(adjusted, target, label_smoothing=smoothing,
                                                               reduction="none"), atol=1e-6, rtol=1e-6)
    if not smoothing:
        torch.testing.assert_close(out.per_sample, balanced, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.ce, F.cross_entropy(logits, target, reduction="none"))


def test_logit_adjusted_sce_uses_adjusted_probabilities():
    """SCE under logit adjustment: both terms on z + o, the RCE with p'_y = softmax(z + o)_y, so the gradient is
    the adjusted CE gradient (p' - onehot) scaled by (alpha + beta (-A) p'_y) per row (float64 closed form)."""
    logits, target, weights = inputs()
    offset = torch.linspace(-6.0, 0.0, 13, dtype=torch.float64)
    logits.requires_grad_(True)
    out = reference_loss(logits, target, weights=weights, alpha=0.7, beta=0.5, A=A_PAPER, logit_offset=offset)
    out.loss.backward()
    p = (logits.detach() + offset).softmax(-1)
    p_y = p.gather(1, target[:, None]).squeeze(1)
    expected = weights * (0.7 * -p_y.log() + 0.5 * -A_PAPER * (1 - p_y))
    torch.testing.assert_close(out.per_sample, expected)
    closed = (0.7 + 0.5 * -A_PAPER * p_y)[:, None] * (p - F.one_hot(target, 13)) * weights[:, None] / len(target)
    torch.testing.assert_close(logits.grad, closed)


@pytest.mark.parametrize("tau", [0.0, 1.0, 1.5])
@pytest.mark.parametrize("name", ["ce", "sce"])
@pytest.mark.parametrize("impl", ["reference", "fused", "fused_linear"])
def test_create_loss_logit_adjusted_on_every_impl(impl, name, tau):
    """`loss.logit_adjust_tau` with the training class sizes as `class_prior`, on every `loss.impl`: loss and
    feature gradient of torch's label-smoothed cross entropy (+ the RCE of the adjusted p_y) on z + tau log
    prior in float64, a class without images included; the recorded CE is the plain logits'. tau = 0 is the
    unadjusted loss, bit for bit."""
    g = torch.Generator().manual_seed(2)
    x, head = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(11, 5, generator=g, dtype=torch.float64)
    target = torch.tensor([3, 0, -100, 10, 1, 2, 2, 9])
    weights = torch.rand(8, generator=g, dtype=torch.float64) * 2
    counts = torch.tensor([40, 25, 12, 9, 5, 4, 3, 2, 1, 1, 0])
    cfg = dict(name=name, impl=impl, label_smoothing=0.1, sce_beta=0.5)

    def run(**kw):
        leaf = x.clone().requires_grad_()
        fn = create_loss(LossConfig(**cfg, **kw), class_prior=counts)
        out = fn(leaf, head, None, target, weights=weights) if impl == "fused_linear" else fn(leaf @ head.T, target,
                                                                                               weights=weights)
        out.loss.backward()
        return out, leaf.grad

    out, grad = run(logit_adjust_tau=tau)
    z = (x @ head.T).requires_grad_()
    prior = counts.double().clamp(min=1) / counts.clamp(min=1).sum()
    adjusted = z + tau * prior.log()
    valid = target != -100
    y = target.clamp(min=0)
    expected = F.cross_entropy(adjusted, target, label_smoothing=0.1, reduction="none")
    if name == "sce":
        expected = expected + 0.5 * -A_OFFICIAL * (1 - adjusted.softmax(-1)[torch.arange(8), y])
    expected = torch.where(valid, expected * weights, 0.0)
    (expected.sum() / valid.sum()).backward()
    torch.testing.assert_close(out.per_sample, expected.detach())
    torch.testing.assert_close(grad, z.grad @ head)
    torch.testing.assert_close(out.ce, torch.where(valid, F.cross_entropy(z.detach(), y, reduction="none"), 0.0))
    if tau == 0:
        plain, plain_grad = run()
        assert torch.equal(out.per_sample, plain.per_sample) and torch.equal(grad, plain_grad)


def test_logit_adjustment_without_a_prior_is_a_config_error():
    with pytest.raises(ConfigError, match="^loss.logit_adjust_tau: needs the training split's class sizes"):
        create_loss(LossConfig(logit_adjust_tau=1.0))
    with pytest.raises(ConfigError, match=r"^logit_adjust_tau: must be >= 0"):
        LossConfig(logit_adjust_tau=-0.5)
