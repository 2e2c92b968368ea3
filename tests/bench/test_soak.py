"""The soak run, short: producers with bursts, gaps, clock jumps and late packets, askers with timeouts."""

from __future__ import annotations

import pytest

from evcascade import InputError
from evcascade.bench.soak import SoakConfig, format_report, run_soak
from evcascade.cascade import Cascade
from evcascade.models.tiny import tiny_tokenizer, tiny_video_llava


@pytest.mark.parametrize("batched", [True, False])
def test_a_short_soak_serves_answers_refuses_bad_packets_clearly_and_never_hangs(batched):
    tok = tiny_tokenizer()
    cascade = Cascade.from_models(tiny_video_llava(tok, seed=2), tok)
    config = SoakConfig(seconds=2.5, cameras=2, askers=2, time_scale=4.0, base_rate=2e5, burst_rate=2e6,
                        sensor_size=(64, 48), max_events=50_000, max_frames=8, timeout_s=20.0, max_new_tokens=4,
                        batched=batched, sample_s=0.25, grace_s=30.0)
    report = run_soak(cascade, config)
    counts = report["counts"]
    assert report["ok"], format_report(report)
    assert counts.get("answers", 0) > 0 and counts.get("events_pushed", 0) > 0 and counts.get("frames_pushed", 0) > 0
    assert report["ring_max_mb"] <= report["ring_bound_mb"]
    # every refused packet or frame has its clear error on record, none lost
    refused = counts.get("packets_refused", 0) + counts.get("frames_refused", 0)
    recorded = sum(v for k, v in report["errors"].items() if k.startswith("push_"))
    assert refused == recorded
    assert all("InputError" in k or "TimeoutError" in k for k in report["errors"])


def test_soak_config_refuses_bad_values():
    with pytest.raises(InputError, match="cameras must be >= 1"):
        SoakConfig(cameras=0)
    with pytest.raises(InputError, match="time_scale must be > 0"):
        SoakConfig(time_scale=0)
