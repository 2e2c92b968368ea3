"""DSEC events.h5: writer layout, DSEC EventSlicer semantics, window reads, rows touched, info, errors."""

from __future__ import annotations

import math

import h5py
import hdf5plugin  # noqa: F401  (Blosc/ZSTD filter for the test-local reads)
import numpy as np
import pytest

from evcascade.errors import InputError
from evcascade.events.container import Events
from evcascade.events.io import event_file_info, read_events, write_events
from evcascade.events.io.dsec import ms_to_idx_for


def make_events(n=20_000, duration_us=250_000, sensor_size=(640, 480), t0_us=1_000_000, seed=0) -> Events:
    rng = np.random.default_rng(seed)
    t_us = np.sort(rng.integers(t0_us, t0_us + duration_us, n))
    return Events.from_arrays(rng.integers(0, sensor_size[0], n), rng.integers(0, sensor_size[1], n),
                              t_us, rng.integers(0, 2, n), sensor_size=sensor_size)


class DsecSlicer:
    """Test-local reimplementation of DSEC's ``EventSlicer.get_events`` (scripts/utils/eventslicer.py):
    ms_to_idx read as DSEC does, conservative ms window, per-element scan for the offsets."""

    def __init__(self, handle):
        self.events = {k: handle[f"events/{k}"] for k in "pxyt"}
        self.ms_to_idx = np.asarray(handle["ms_to_idx"], dtype="int64")
        self.t_offset = int(handle["t_offset"][()]) if "t_offset" in handle else 0

    def get_events(self, t_start_us, t_end_us):
        t_start_us -= self.t_offset
        t_end_us -= self.t_offset
        start_ms, end_ms = math.floor(t_start_us / 1000), math.ceil(t_end_us / 1000)
        if start_ms >= self.ms_to_idx.size or end_ms >= self.ms_to_idx.size:
            return None
        lo, hi = self.ms_to_idx[start_ms], self.ms_to_idx[end_ms]
        times = np.asarray(self.events["t"][lo:hi])
        a = next((i for i, v in enumerate(times) if v >= t_start_us), times.size)
        b = times.size
        for i in range(times.size - 1, -1, -1):
            if times[i] >= t_end_us:
                b = i
            else:
                break
        out = {"t": times[a:b].astype(np.int64) + self.t_offset}
        for k in "pxy":
            out[k] = np.asarray(self.events[k][lo + a:lo + b])
        return out


def test_writer_layout_dtypes_and_compression(tmp_path):
    ev = make_events(5000)
    path = write_events(tmp_path / "events.h5", ev, t_offset_us=900_000)
    with h5py.File(path, "r") as f:
        assert {k: f[f"events/{k}"].dtype for k in "xytp"} == {
            "x": np.uint16, "y": np.uint16, "t": np.uint32, "p": np.uint8}
        assert f["ms_to_idx"].dtype == np.uint64 and f["t_offset"].dtype == np.int64
        assert int(f["t_offset"][()]) == 900_000
        assert f["events/t"].chunks is not None
        assert "32001" in f["events/t"]._filters  # Blosc's registered HDF5 filter id
        t_rel = f["events/t"][()].astype(np.int64)
        np.testing.assert_array_equal(t_rel, ev.t_us - 900_000)
        index = f["ms_to_idx"][()].astype(np.int64)
        assert index.shape[0] == int(t_rel[-1]) // 1000 + 2  # last ms + 2, as DSEC has it
        for ms in range(index.shape[0]):  # DSEC's two defining properties
            if index[ms] < t_rel.shape[0]:
                assert t_rel[index[ms]] >= ms * 1000
            if index[ms] > 0:
                assert t_rel[index[ms] - 1] < ms * 1000


def test_ms_to_idx_matches_dsec_docstring_example():
    t = np.array([0, 500, 2100, 5000, 5000, 7100, 7200, 7200, 8100, 9000])
    assert ms_to_idx_for(t).tolist()[:10] == [0, 2, 2, 3, 3, 3, 5, 5, 8, 9]


def test_dsec_slicer_reads_our_file_and_agrees_with_read_events(tmp_path):
    ev = make_events(8000, duration_us=80_000)
    path = write_events(tmp_path / "events.h5", ev, t_offset_us=999_000)
    rng = np.random.default_rng(1)
    with h5py.File(path, "r") as f:
        slicer = DsecSlicer(f)
        windows = [(ev.start_us, ev.end_us), (ev.start_us + 1234, ev.start_us + 51_234)]
        windows += [tuple(sorted(rng.integers(ev.start_us, ev.end_us, 2) + np.array([0, 1]))) for _ in range(15)]
        for start, end in windows:
            ref = slicer.get_events(int(start), int(end))
            assert ref is not None, (start, end)
            got = read_events(path, int(start), int(end))
            expected = ev.window(int(start), int(end))
            np.testing.assert_array_equal(got.t_us, ref["t"])
            np.testing.assert_array_equal(got.x, ref["x"])
            np.testing.assert_array_equal(got.p, ref["p"])
            np.testing.assert_array_equal(got.t_us, expected.t_us)
            np.testing.assert_array_equal(got.y, expected.y)


def test_round_trip_whole_file_and_sensor_size_attribute(tmp_path):
    ev = make_events(3000, sensor_size=(346, 260))
    back = read_events(write_events(tmp_path / "events.h5", ev, t_offset_us=ev.start_us))
    assert back.sensor_size == (346, 260)
    for field in ("x", "y", "t_us", "p"):
        np.testing.assert_array_equal(getattr(back, field), getattr(ev, field))


def test_window_edges_empty_and_outside(tmp_path):
    ev = Events.from_arrays([1, 2, 3, 4], [0, 0, 0, 0], [1000, 1999, 2000, 5000], [1, 0, 1, 0], sensor_size=(8, 2))
    path = write_events(tmp_path / "e.h5", ev)
    assert read_events(path, 1999, 2000).t_us.tolist() == [1999]  # half-open
    assert read_events(path, 2000, 5000).t_us.tolist() == [2000]
    assert read_events(path, 2001, 4999).t_us.tolist() == []  # empty window, not an error
    outside = read_events(path, 10_000, 20_000)
    assert len(outside) == 0 and outside.sensor_size == (8, 2)
    assert len(read_events(path, 0, 1000)) == 0  # before the recording
    assert read_events(path, None, 2000).t_us.tolist() == [1000, 1999]
    assert read_events(path, 2000, None).t_us.tolist() == [2000, 5000]


def test_event_file_info_is_cheap_and_right(tmp_path):
    ev = make_events(4000)
    path = write_events(tmp_path / "events.h5", ev, t_offset_us=500_000)
    info = event_file_info(path)
    assert (info.format, info.sensor_size, info.num_events) == ("dsec", (640, 480), 4000)
    assert (info.start_us, info.end_us) == (ev.start_us, ev.end_us)


def test_window_read_touches_only_needed_rows(tmp_path, monkeypatch):
    """A 5 ms window of a 400 ms file reads only rows of the bounding milliseconds."""
    ev = make_events(200_000, duration_us=400_000)
    path = write_events(tmp_path / "events.h5", ev, t_offset_us=ev.start_us)
    start, end = ev.start_us + 200_300, ev.start_us + 205_700
    window_rows = len(ev.window(start, end))
    per_ms = len(ev) / 400
    requested: list[tuple[str, int]] = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        out = original(self, key)
        requested.append((self.name, int(np.size(out))))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    got = read_events(path, start, end)
    monkeypatch.undo()
    np.testing.assert_array_equal(got.t_us, ev.window(start, end).t_us)
    by_name: dict[str, int] = {}
    for name, count in requested:
        by_name[name] = by_name.get(name, 0) + count
    assert by_name["/events/x"] == by_name["/events/y"] == by_name["/events/p"] == window_rows
    assert window_rows < by_name["/events/t"] <= window_rows + 3 * per_ms  # bounding ms only
    assert by_name.get("/ms_to_idx", 0) <= 2  # two index entries, not the whole index
    assert sum(by_name.values()) < 4 * len(ev) / 50  # four columns, well under 2% of each


def test_rectify_map_moves_rounds_and_drops(tmp_path):
    ev = Events.from_arrays([0, 1, 2, 3], [0, 0, 1, 1], [10, 20, 30, 40], [1, 0, 1, 0], sensor_size=(4, 2))
    path = write_events(tmp_path / "e.h5", ev)
    rect = np.zeros((2, 4, 2))
    ys, xs = np.mgrid[0:2, 0:4]
    rect[..., 0], rect[..., 1] = xs + 0.6, ys  # shift right by 0.6 px: rounds to +1, x=3 falls off
    map_path = tmp_path / "rectify_map.h5"
    with h5py.File(map_path, "w") as f:
        f["rectify_map"] = rect
    out = read_events(path, rectify_map=map_path)
    assert out.x.tolist() == [1, 2, 3] and out.y.tolist() == [0, 0, 1] and out.t_us.tolist() == [10, 20, 30]
    with pytest.raises(InputError, match=r"\(2, 4, 2\)"):
        read_events(path, rectify_map=np.zeros((4, 2, 2)))


def test_writer_rejects_span_that_does_not_fit_uint32(tmp_path):
    ev = Events.from_arrays([0, 1], [0, 0], [0, 2**32 + 5], [1, 0], sensor_size=(2, 1))
    with pytest.raises(InputError, match=r"span \[0, 4294967302\)"):
        write_events(tmp_path / "e.h5", ev)
    with pytest.raises(InputError, match="t_offset_us"):
        write_events(tmp_path / "e.h5", ev, t_offset_us=10)  # first event before the offset
    assert not (tmp_path / "e.h5").exists()
    with pytest.raises(InputError, match="does not exist"):
        write_events(tmp_path / "missing_dir" / "e.h5", ev)


def _write_raw_h5(path, columns: dict, extra=None):
    with h5py.File(path, "w") as f:
        for name, values in columns.items():
            f[name] = values
        for name, values in (extra or {}).items():
            f[name] = values
    return path


def test_missing_datasets_named(tmp_path):
    path = _write_raw_h5(tmp_path / "e.h5", {"events/x": np.zeros(3, np.uint16), "events/t": np.arange(3, dtype=np.uint32)},
                         {"ms_to_idx": np.zeros(2, np.uint64)})
    with pytest.raises(InputError, match=r"lacks datasets \['events/y', 'events/p'\]; it has \['events/t', 'events/x', 'ms_to_idx'\]"):
        read_events(path)


def test_wrong_dtype_named(tmp_path):
    cols = {"events/x": np.zeros(3, np.uint16), "events/y": np.zeros(3, np.uint16),
            "events/t": np.arange(3, dtype=np.float32), "events/p": np.zeros(3, np.uint8)}
    path = _write_raw_h5(tmp_path / "e.h5", cols, {"ms_to_idx": np.zeros(2, np.uint64)})
    with pytest.raises(InputError, match=r"'events/t' must have an integer dtype, got float32"):
        read_events(path)


def test_unsorted_rows_named_or_sorted(tmp_path):
    t = np.array([0, 10, 5, 20], np.uint32)
    cols = {"events/x": np.arange(4, dtype=np.uint16), "events/y": np.zeros(4, np.uint16), "events/t": t,
            "events/p": np.ones(4, np.uint8)}
    path = _write_raw_h5(tmp_path / "e.h5", cols, {"ms_to_idx": np.array([0, 4], np.uint64)})
    with pytest.raises(InputError, match=r"event 1 has t=10 us and event 2 has t=5"):
        read_events(path)
    fixed = read_events(path, sort=True)
    assert fixed.t_us.tolist() == [0, 5, 10, 20] and fixed.x.tolist() == [0, 2, 1, 3]


def test_coordinates_outside_sensor(tmp_path):
    ev = Events.from_arrays([5, 9], [0, 1], [1, 2], [1, 0], sensor_size=(10, 2))
    path = write_events(tmp_path / "e.h5", ev)
    with pytest.raises(InputError, match="outside the sensor"):
        read_events(path, sensor_size=(8, 2))


@pytest.mark.parametrize("keep_fraction", [0.5, 0.97])
def test_truncated_file_names_path(tmp_path, keep_fraction):
    path = write_events(tmp_path / "events.h5", make_events(20_000))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(InputError, match="events.h5"):
        read_events(path)


def test_corrupt_payload_names_path(tmp_path):
    path = write_events(tmp_path / "events.h5", make_events(20_000))
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4096] = b"\xff" * 4096  # smash compressed chunks, keep the superblock
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="events.h5"):
        read_events(path)


def test_writer_picks_t_offset_for_real_size_times(tmp_path):
    # DSEC's image clock: times ~5e10 us (t_offset 49_599_300_529 in a real recording) do not fit uint32 as they are
    t_offset = 49_599_300_529
    ev = Events.from_arrays([1, 2, 3, 0], [0, 1, 0, 1], np.array([0, 1500, 2600, 9000]) + t_offset, [1, 0, 1, 1],
                            sensor_size=(4, 2))
    source = write_events(tmp_path / "source.h5", ev, t_offset_us=t_offset - 1000)
    window = read_events(source, t_offset + 1000, t_offset + 9000)  # a window read from the DSEC file...
    out = write_events(tmp_path / "window.h5", window)  # ...writes back without choosing an offset
    with h5py.File(out, "r") as f:
        assert int(f["t_offset"][()]) == t_offset + 1500 and f["events/t"][()].tolist() == [0, 1100]
    back = read_events(out)
    assert back.t_us.tolist() == window.t_us.tolist() == [t_offset + 1500, t_offset + 2600]
    assert back.x.tolist() == window.x.tolist() and back.p.tolist() == window.p.tolist()
    assert read_events(write_events(tmp_path / "small.h5", Events.from_arrays([0], [0], [7], [1], (1, 1)))).t_us.tolist() == [7]
    with h5py.File(tmp_path / "small.h5", "r") as f:
        assert int(f["t_offset"][()]) == 0  # times that fit stay as they are
    too_long = Events.from_arrays([0, 1], [0, 0], [t_offset, t_offset + 2**32 + 5], [1, 0], sensor_size=(2, 1))
    with pytest.raises(InputError, match="about 71 min"):
        write_events(tmp_path / "long.h5", too_long)
