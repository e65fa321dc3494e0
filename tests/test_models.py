"""create_model (timm backbone + dropout 0.5 after pooling, offline weights) and create_optimizer."""

import pickle
from pathlib import Path

import pytest
import timm
import torch

from fastprod.config import ConfigError, ModelConfig, OptimConfig
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


def test_bad_model_inputs_are_config_errors_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.name: unknown timm model 'resnet_nope'"):
        create_model(ModelConfig(name="resnet_nope"), 3)
    with pytest.raises(ConfigError, match=r"^model\.pretrained_file: no such file: .*missing\.pth$"):
        create_model(ModelConfig(name="resnet10t", pretrained_file=str(tmp_path / "missing.pth")), 3)
    with pytest.raises(ConfigError, match=r"^model\.init_from: no such file: .*missing\.pt$"):
        create_model(ModelConfig(name="resnet10t", init_from=str(tmp_path / "missing.pt")), 3)


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(ConfigError) as err:
        create_model(ModelConfig(name="resnet34x"), 3)
    message = str(err.value)
    assert "\n" not in message and "did you mean" in message
    suggested = message.split("did you mean ")[1].removesuffix("?)").split(", ")
    assert "resnet34" in suggested and all(name in timm.list_models() for name in suggested)


def test_init_from_loads_every_weight_and_rejects_a_mismatch(tmp_path):
    source = create_model(ModelConfig(name="resnet10t"), 6)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    loaded = create_model(ModelConfig(name="resnet10t", init_from=str(tmp_path / "model.pt")), 6)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ValueError, match="model.init_from"):
        create_model(ModelConfig(name="resnet10t", init_from=str(tmp_path / "model.pt")), 7)


def test_init_from_file_that_does_not_fit(tmp_path):
    five = tmp_path / "five.pt"
    torch.save(create_model(ModelConfig(name="resnet10t"), 5).state_dict(), five)
    with pytest.raises(ConfigError) as err:
        create_model(ModelConfig(name="resnet10t", init_from=str(five)), 3)
    assert str(err.value).startswith(f"model.init_from: {five} does not fit") and "fc.weight" in str(err.value)
    assert "\n" not in str(err.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a weights file at all")
    with pytest.raises(ConfigError, match=r"^model\.init_from: .*garbage\.pt cannot be read as a weights file"):
        create_model(ModelConfig(name="resnet10t", init_from=str(garbage)), 3)
    with pytest.raises(ConfigError, match=r"^model\.pretrained_file: .*garbage\.pt cannot be loaded"):
        create_model(ModelConfig(name="resnet10t", pretrained_file=str(garbage)), 3)


class Payload:
    """Unpickling this creates `marker`: what a malicious weights file would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_init_from_refuses_a_malicious_pickle(tmp_path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))  # the payload does run when unpickled unguarded
    assert control.exists()
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"fc.weight": Payload(marker)}, evil)
    with pytest.raises(ConfigError) as err:
        create_model(ModelConfig(name="resnet10t", init_from=str(evil)), 3)
    assert str(err.value).startswith(f"model.init_from: {evil} holds Python objects (GLOBAL ")
    assert "refused unread" in str(err.value) and not marker.exists()
    with pytest.raises(ConfigError, match=r"^model\.pretrained_file: .*evil\.pt cannot be loaded"):
        create_model(ModelConfig(name="resnet10t", pretrained_file=str(evil)), 3)  # timm loads weights_only too
    assert not marker.exists()


TINY = """
data: {{manifest: {manifest}, image_size: 32, batch_size: 16, workers: 0}}
model: {{name: resnet10t}}
run: {{dir: {run_dir}, progress: false}}
"""


@pytest.mark.parametrize("override, key", [
    ("model.name=resnet34x", "model.name"), ("model.init_from={tmp}/missing.pt", "model.init_from"),
    ("model.pretrained_file={tmp}/missing.pth", "model.pretrained_file"), ("optim.lr=[1,", "optim.lr"),
    ("model.init_from={tmp}/evil.pt", "model.init_from"),
])
def test_train_cli_reports_config_errors_in_one_line(manifest_dir, tmp_path, capsys, override, key):
    """The real `fastprod train`: exit code 2 and one `config error:` line naming the key, no traceback."""
    from fastprod.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.format(manifest=manifest_dir, run_dir=tmp_path / "run"))
    torch.save({"fc.weight": Payload(tmp_path / "pwned")}, tmp_path / "evil.pt")
    assert main(["train", "--config", str(config), "--set", override.format(tmp=tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"config error: {key}: ")
    assert not (tmp_path / "pwned").exists()


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU choice (apex FusedSGD, else torch's fused SGD) needs CUDA")
def test_gpu_optimizer_is_fused():
    from fastprod.optim import apex_fused_sgd

    gpu = create_optimizer(create_model(ModelConfig(name="resnet10t"), 5).cuda(), OptimConfig())
    expected = apex_fused_sgd() or torch.optim.SGD
    assert type(gpu) is expected and (expected is not torch.optim.SGD or gpu.defaults["fused"])
