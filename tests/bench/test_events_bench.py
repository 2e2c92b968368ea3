"""The events benchmark at a tiny size: every reference timed on the same events as ours (or labelled
extrapolated with the measured size), outputs agreeing, load and commit recorded. No timing assertions."""

import json

import pytest

from evcascade.bench import events as bench


@pytest.mark.parametrize("baseline, extrapolated", [(None, False), (400, True)])
def test_event_images_reference_is_timed_on_our_events_or_labelled(tmp_path, baseline, extrapolated, capsys):
    argv = ["--events", "2000", "--repeats", "1", "--threads", "1", "--out", str(tmp_path)]
    assert bench.main(argv + ([] if baseline is None else ["--baseline-events", str(baseline)])) == 0
    payload = json.loads((tmp_path / "events.json").read_text())
    rows = {row["op"]: row for row in payload["rows"]}
    images = rows["event_images(5)"]
    assert images["agree"] is True and images["reference_ms"] > 0
    assert ("extrapolated" in images["reference"]) is extrapolated
    assert images["note"] == ("extrapolated: loop timed on 400 events, scaled x5.0" if extrapolated
                              else "both timed on the same 2000 events")
    assert all(row["agree"] is True for row in payload["rows"])
    environment = payload["environment"]
    assert len(environment["loadavg_before"]) == 3 and "git_commit" in environment
