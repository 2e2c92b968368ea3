"""Every entry point's --help is whole and readable: the train stages, the demos."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_train_help_lists_the_stages_and_exits_0(capsys):
    from evcascade.train.cli import STAGES, main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m evcascade.train ")
    for stage in STAGES:
        assert f"  {stage} " in out
    assert main([]) == 2 and main(["bogus"]) == 2
    assert "unknown stage 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["align", "distill"])
def test_stage_help_is_lightning_cli_under_our_name_without_its_warning(stage, capsys):
    from evcascade.train.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # LightningCLI's "args and sys.argv both given" caution would raise here
        with pytest.raises(SystemExit) as exit_info:
            main([stage, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert out.startswith(f"usage: python -m evcascade.train {stage} ")
    assert "fit" in out and len(out.splitlines()) < 60  # the subcommands; `fit --help` has every option


def test_cache_help_is_named_for_its_stage(capsys):
    from evcascade.train.cli import main

    with pytest.raises(SystemExit):
        main(["cache", "--help"], prog="evcascade train")
    assert capsys.readouterr().out.startswith("usage: evcascade train cache ")


@pytest.mark.parametrize("script", ["live_stream.py", "panel.py"])
def test_demo_help_is_whole_and_describes_the_bundled_cascade(script, capsys):
    spec = importlib.util.spec_from_file_location(f"demo_{script[:-3]}", ROOT / "demos" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith(f"usage: python demos/{script}")
    description = module.__doc__.strip()
    assert description.splitlines()[-1] in out and description.endswith(".")  # all of it, to its last sentence
    assert "bundled demo cascade" in out and "once it ships" not in out
