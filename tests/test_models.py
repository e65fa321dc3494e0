"""create_model (timm backbone + dropout 0.5 after pooling, offline weights) and create_optimizer."""

import pytest
import timm
import torch

from fastprod.config import ModelConfig, OptimConfig
from fastprod.models import create_model
from fastprod.optim import create_optimizer


def test_head_sized_and_dropout_after_pooling():
    model = create_model(ModelConfig(name="resnet10t", drop_rate=0.5), num_classes=37)
    assert model.get_classifier().out_features == 37
    features = torch.randn(4, model.num_features, 2, 2)
    model.train()
    torch.manual_seed(0)
    a = model.forward_head(features)
    b = model.forward_head(features)
    assert not torch.allclose(a, b)  # dropout is active in training
    model.eval()
    pooled = features.mean(dim=(2, 3))
    torch.testing.assert_close(model.forward_head(features), model.get_classifier()(pooled))


def test_pretrained_backbone_from_local_file(tmp_path):
    source = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "resnet10t_in1k.pth"
    torch.save(source.state_dict(), path)
    model = create_model(ModelConfig(name="resnet10t", pretrained_file=str(path)), num_classes=11)
    ours, theirs = model.state_dict(), source.state_dict()
    backbone = [k for k in theirs if not k.startswith("fc.")]
    assert all(torch.equal(ours[k], theirs[k]) for k in backbone)
    assert ours["fc.weight"].shape == (11, model.num_features)


def test_bad_model_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="model.name"):
        create_model(ModelConfig(name="resnet_nope"), 3)
    with pytest.raises(FileNotFoundError, match="model.pretrained_file"):
        create_model(ModelConfig(name="resnet10t", pretrained_file=str(tmp_path / "missing.pth")), 3)


def test_no_weight_decay_on_norms_and_biases():
    model = create_model(ModelConfig(name="resnet10t"), 5)
    opt = create_optimizer(model, OptimConfig(weight_decay=3e-4))
    decayed, exempt = opt.param_groups
    assert decayed["weight_decay"] == 3e-4 and exempt["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in exempt["params"])
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))
    everything = create_optimizer(model, OptimConfig(decay_norm_and_bias=True))
    assert len(everything.param_groups) == 1


def test_cpu_optimizer_is_foreach_sgd():
    cpu = create_optimizer(create_model(ModelConfig(name="resnet10t"), 5), OptimConfig(nesterov=True))
    assert type(cpu) is torch.optim.SGD and cpu.defaults["foreach"] and cpu.defaults["nesterov"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU choice (apex FusedSGD, else torch's fused SGD) needs CUDA")
def test_gpu_optimizer_is_fused():
    from fastprod.optim import apex_fused_sgd

    gpu = create_optimizer(create_model(ModelConfig(name="resnet10t"), 5).cuda(), OptimConfig())
    expected = apex_fused_sgd() or torch.optim.SGD
    assert type(gpu) is expected and (expected is not torch.optim.SGD or gpu.defaults["fused"])
