"""Config tree: YAML loading, overrides, and errors that name the bad key."""

import pytest

from fastprod.config import ConfigError, load_config, save_config


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_loads_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "data: {manifest: m, image_size: 64}\noptim: {lr: 0.2}\n")
    cfg = load_config(path, ["optim.lr=0.05", "run.precision=bf16", "data.augment.crop_scale=[0.2, 1.0]",
                             "optim.weight_decay=5e-4"])
    assert cfg.data.image_size == 64 and cfg.optim.lr == 0.05 and cfg.run.precision == "bf16"
    assert cfg.data.augment.crop_scale == (0.2, 1.0)
    assert cfg.optim.weight_decay == 5e-4  # YAML 1.1 reads "5e-4" as a string; accepted as a number
    assert load_config(path).optim.weight_decay == 3e-4  # recipe default


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, "data: {manifest: m}\n"), ["schedule.epochs=3"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize("text, overrides, key", [
    ("data: {manifest: m}\noptim: {lrr: 0.1}\n", [], "optim.lrr"),
    ("data: {manifest: m}\n", ["data.augment.hflip=0.5"], "data.augment.hflip"),
    ("data: {manifest: m}\nbogus: 1\n", [], "bogus"),
    ("data: {manifest: m}\n", ["optim.lr=-1"], "optim.lr"),
    ("data: {manifest: m}\n", ["optim.lr=fast"], "optim.lr"),
    ("data: {manifest: m}\n", ["run.precision=fp8"], "run.precision"),
    ("data: {manifest: m}\n", ["run.zero_stage=4"], "run.zero_stage"),
    ("data: {manifest: m}\n", ["loss.logit_adjust_tau=-1"], "loss.logit_adjust_tau"),
    ("data: {manifest: m}\n", ["data.image_size=64.5"], "data.image_size"),
    ("data: {manifest: m}\n", ["data.augment.hflip_p=2"], "data.augment.hflip_p"),
    ("data: {manifest: m}\n", ["model.channels_last=1"], "model.channels_last"),
    ("data: {image_size: 64}\n", [], "data.manifest"),
])
def test_bad_keys_and_values_name_the_key(tmp_path, text, overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), overrides)
    assert key in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: {manifest: [\n"))
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(write(tmp_path, "data: {manifest: m}\n"), ["optim.lr"])


def test_shipped_configs_load():
    """Both load; the demo's dropout and sampler come from the ladder, AliProducts' dropout from the seed."""
    demo, ali = load_config("configs/demo.yaml"), load_config("configs/resnet34_aliproducts.yaml")
    assert demo.model.drop_rate == 0 and ali.model.drop_rate == 0.5
    assert demo.data.sampler == "sqrt" and demo.loss.logit_adjust_tau == 0
    assert ali.data.sampler == "uniform" and ali.loss.logit_adjust_tau == 1
    assert demo.schedule.cycle_mult == ali.schedule.cycle_mult == 2


@pytest.mark.parametrize("override, shown", [
    ("optim.lr=.inf", "inf"), ("optim.lr=inf", "inf"), ("optim.lr=.nan", "nan"), ("schedule.lr_min=.nan", "nan"),
    ("data.augment.rotation_degrees=-.inf", "-inf"), ("loss.sce_A=-.inf", "-inf"), ("optim.grad_clip=1e999", "inf"),
    ("data.augment.crop_scale=[.nan, 1.0]", "nan"), ("optim.lr=1" + "0" * 400, "inf"),
])
def test_non_finite_floats_are_refused(tmp_path, override, shown):
    """inf and nan (YAML .inf/.nan, the string inf, an overflowing 1e999) are never a valid setting."""
    key = override.split("=")[0] + ("[0]" if "crop_scale" in override else "")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "data: {manifest: m}\n"), [override])
    assert str(err.value) == f"{key}: must be a finite number, got {shown}"


def test_non_finite_value_in_yaml_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^optim\.momentum: must be a finite number, got nan$"):
        load_config(write(tmp_path, "data: {manifest: m}\noptim: {momentum: .nan}\n"))


def test_cli_refuses_infinite_lr_before_training(tmp_path, capsys):
    from fastprod.cli import main

    config = write(tmp_path, f"data: {{manifest: {tmp_path / 'nowhere'}}}\nrun: {{dir: {tmp_path / 'run'}}}\n")
    assert main(["train", "--config", str(config), "--set", "optim.lr=.inf"]) == 2
    assert capsys.readouterr().err == "config error: optim.lr: must be a finite number, got inf\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["optim.lr=[1,", "optim.lr={a: ", "data.manifest='m", "optim.lr=@x"])
def test_unparsable_override_value_names_the_key(tmp_path, override):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "data: {manifest: m}\n"), [override])
    key, raw = override.split("=", 1)
    assert str(err.value).startswith(f"{key}: cannot parse {raw!r} as a YAML value") and "\n" not in str(err.value)
