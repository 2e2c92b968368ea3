"""The README's Python API snippets run as written, with the bundled cascade on the sample clip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_api_snippets() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Python API", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_python_api_snippets_run_and_answer(monkeypatch, capsys):
    from evcascade.cascade import resolve_model

    if resolve_model("bundled") is None:
        pytest.skip("the bundled demo cascade is not installed")
    snippets = python_api_snippets()
    assert len(snippets) == 2
    monkeypatch.chdir(ROOT)  # the snippets use the repository's sample clip paths
    namespace: dict = {}
    for code in snippets:
        exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "the circle and the square are moving ." in out and "the square moves up ." in out and "tau" in out
    assert namespace["fast"].stats.acceptance.startswith("token_v3")
    assert len(namespace["answer"].token_ids) >= 1  # the LiveSession block's answer
