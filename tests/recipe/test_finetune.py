"""The finetune stage's refusals (its run as written, on a balanced subset smaller than a batch, inheriting the
trained run's settings, is in tests/project/test_readme_runs.py)."""

from __future__ import annotations

import pytest
from readme_commands import ROOT

from fastprod.cli import main


@pytest.mark.e2e
@pytest.mark.parametrize("extra, says", [
    (["--set", "optim.lr=0.5"], "--set optim.lr: the finetune's LR is --lr"),
    ([], "config file not found"),
])
def test_bad_finetune_arguments_exit_2(tmp_path, capsys, extra, says):
    argv = ["finetune", "--run", str(tmp_path / "nothing"), "--data", str(tmp_path), "--out", str(tmp_path / "ft")]
    if extra:
        (tmp_path / "nothing").mkdir()
        (tmp_path / "nothing" / "resolved.yaml").write_text((ROOT / "configs" / "demo.yaml").read_text())
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("config error:") and says in err and "Traceback" not in err
