"""Drafter presets: every bundled YAML parses into a valid preset; bad files are named."""

from __future__ import annotations

import pytest

from evcascade.errors import InputError
from evcascade.models.presets import VISUAL_PREFIXES, list_drafter_presets, load_drafter_preset


def test_bundled_presets_parse():
    names = list_drafter_presets()
    assert {"llama-68m", "llama-160m", "vicuna-68m", "tinyllama-1.1b", "eventgpt-7b"} <= set(names)
    for name in names:
        preset = load_drafter_preset(name)
        assert preset.name == name and preset.visual_prefix in VISUAL_PREFIXES
        assert preset.vocab_size == 32000  # all share Video-LLaVA's Llama tokenizer
    eventgpt = load_drafter_preset("eventgpt-7b")
    assert (eventgpt.format, eventgpt.visual_prefix, eventgpt.clip_tower) == (
        "eventgpt", "eventgpt", "openai/clip-vit-large-patch14-336")
    assert load_drafter_preset("llama-68m").hub_id == "JackFram/llama-68m"


def test_bad_presets_are_named(tmp_path):
    with pytest.raises(InputError, match="unknown drafter preset 'nope'.*llama-68m"):
        load_drafter_preset("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nhub_id: x/y\nvisual_prefix: frames\n")
    with pytest.raises(InputError, match="visual_prefix must be one of .* got 'frames'"):
        load_drafter_preset(bad)
    bad.write_text("name: bad\nhub_id: x/y\ncolour: red\n")
    with pytest.raises(InputError, match=r"unknown fields \['colour'\]"):
        load_drafter_preset(bad)
    bad.write_text("name: bad\n")
    with pytest.raises(InputError, match="required field 'hub_id'"):
        load_drafter_preset(bad)
