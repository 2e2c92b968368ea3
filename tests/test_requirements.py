"""The transformers floor in pyproject.toml is the one the code needs, and the installed transformers meets it.

A transformers without the APIs below fails here by name, not deep inside a decode. The floor itself is checked
against the version that introduced each API (read from the releases' sources once: ``cache=`` on every model
forward and output arrived in 5.24, ``mm_encoder_outputs`` in 5.18).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import tomllib
import warnings
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
API_SINCE = {"forward(cache=...) and output.cache": Version("5.24"), "mm_encoder_outputs": Version("5.18")}


def declared(name: str) -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, deps) if r.name == name)


def floor_of(requirement: Requirement) -> Version:
    floors = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    assert len(floors) == 1, f"{requirement}: expected one >= floor"
    return floors[0]


def test_declared_floor_covers_every_api_we_use_and_the_installed_version_meets_it():
    requirement = declared("transformers")
    assert floor_of(requirement) >= max(API_SINCE.values()), (requirement, API_SINCE)
    installed = importlib.metadata.version("transformers")
    assert requirement.specifier.contains(installed, prereleases=True), f"transformers {installed} vs {requirement}"


def test_the_transformers_apis_we_call_exist():
    from transformers import DynamicCache, LlamaForCausalLM, TextStreamer, VideoLlavaForConditionalGeneration
    from transformers.modeling_outputs import CausalLMOutputWithPast
    from transformers.models.video_llava.modeling_video_llava import VideoLlavaModel

    target = inspect.signature(VideoLlavaForConditionalGeneration.forward).parameters
    assert {"cache", "use_cache", "mm_encoder_outputs", "logits_to_keep", "pixel_values_videos"} <= set(target)
    assert {"cache", "use_cache", "inputs_embeds"} <= set(inspect.signature(LlamaForCausalLM.forward).parameters)
    assert "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    assert callable(getattr(VideoLlavaModel, "get_video_features"))
    assert callable(getattr(DynamicCache, "crop")) and callable(getattr(TextStreamer, "on_finalized_text"))


def test_a_cascade_answer_uses_no_deprecated_transformers_api(capfd):
    from test_cascade import EVENTS, VIDEO, build_tiny_cascade

    cascade = build_tiny_cascade()
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        answer = cascade.generate(EVENTS, VIDEO, "what is moving ?", max_new_tokens=6)
    assert len(answer.token_ids) >= 1
    assert "deprecated" not in capfd.readouterr().err  # transformers' own logger (warning_once) writes to stderr


@pytest.mark.parametrize("name", ["scipy", "expelliarmus"])
def test_what_the_tests_import_is_declared_in_the_test_extra(name):
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert name in {Requirement(r).name for r in extra}
