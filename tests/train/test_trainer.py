"""The train step in-process (gloo, one rank): a non-finite loss skips the step and never reaches
the weights or a checkpoint; a finite one moves the weights."""

from __future__ import annotations

import pytest
import torch

from fastprod.config import load_config
from fastprod.data.loaders import Batch

pytestmark = pytest.mark.e2e  # trains, launches processes or compiles


@pytest.fixture(scope="module")
def trainer(manifest_dir, tmp_path_factory):
    from fastprod.train.distributed import init_distributed
    from fastprod.train.engine import Trainer

    run_dir = tmp_path_factory.mktemp("engine") / "run"
    cfg = load_config(None, [f"data.manifest={manifest_dir}", "data.image_size=32", "data.batch_size=8",
                             "data.workers=0", "model.name=resnet10t", f"run.dir={run_dir}", "run.progress=false"])
    return Trainer(cfg, init_distributed())


def weights(trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.engine.module.state_dict().items()}


def test_non_finite_loss_skips_the_step(trainer):
    batch = next(iter(trainer.train_loader))
    before = weights(trainer)
    poisoned = Batch(batch.images.clone(), batch.labels, batch.indices)
    poisoned.images[0, 0, 0, 0] = float("inf")
    with pytest.warns(UserWarning, match="non-finite loss"):
        assert trainer.train_step(poisoned, 0.1) is None
    assert trainer.skipped_steps == 1
    after = weights(trainer)
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included

    loss = trainer.train_step(batch, 0.1)
    assert loss is not None and torch.isfinite(loss)
    moved = weights(trainer)
    assert not torch.equal(moved["fc.weight"], before["fc.weight"])

    trainer.step = 2
    trainer.save_checkpoint()
    saved = torch.load(trainer.checkpointer.dir / "step-000000002" / "mp_rank_00_model_states.pt",
                       map_location="cpu", weights_only=False)["module"]
    assert all(torch.isfinite(v.float()).all() for v in saved.values())
    assert torch.load(trainer.checkpointer.dir / "step-000000002" / "trainer_rank0.pt",
                      weights_only=True)["skipped_steps"] == 1


def test_a_step_is_plain_sgd_without_clipping(manifest_dir, tmp_path):
    """optim.grad_clip = 0 means no clipping (DeepSpeed's own default clips at norm 1.0) and one rank skips the
    all-reduce: the first step equals w - lr (g + wd w), g from torch's cross entropy on a copy of the model."""
    import copy

    import torch.nn.functional as F

    from fastprod.train.distributed import init_distributed
    from fastprod.train.engine import Trainer

    cfg = load_config(None, [f"data.manifest={manifest_dir}", "data.image_size=32", "data.batch_size=8",
                             "data.workers=0", "model.name=resnet10t", "model.drop_rate=0", "optim.grad_clip=0",
                             f"run.dir={tmp_path / 'run'}", "run.progress=false"])
    trainer = Trainer(cfg, init_distributed())
    assert trainer.engine.gradient_clipping() == 0 and not trainer.engine.enable_backward_allreduce
    batch = next(iter(trainer.train_loader))
    model = trainer.engine.module
    reference = copy.deepcopy(model)
    params = list(reference.parameters())
    grads = torch.autograd.grad(F.cross_entropy(reference(batch.images), batch.labels), params)
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) > 1.0  # clipping at 1 would show
    decay = {id(p): group["weight_decay"] for group in trainer.optimizer.param_groups for p in group["params"]}
    assert trainer.train_step(batch, 0.5) is not None
    for p, before, g in zip(model.parameters(), params, grads):
        torch.testing.assert_close(p.detach(), before.detach() - 0.5 * (g + decay[id(p)] * before.detach()),
                                   rtol=1e-4, atol=1e-5)
    trainer.lock.release()
