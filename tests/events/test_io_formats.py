"""NumPy, EventGPT, text and generic HDF5 files; format detection; bad input named clearly."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from evcascade.errors import InputError, InputFileNotFoundError
from evcascade.events.container import Events
from evcascade.events.io import FORMATS, detect_format, event_file_info, read_events, write_events

SIZE = (32, 24)


def sample(n=500, seed=0) -> Events:
    rng = np.random.default_rng(seed)
    return Events.from_arrays(rng.integers(0, SIZE[0], n), rng.integers(0, SIZE[1], n),
                              np.sort(rng.integers(0, 50_000, n)), rng.integers(0, 2, n), sensor_size=SIZE)


def assert_same(got: Events, want: Events):
    for field in ("t_us", "x", "y", "p"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)


# ------------------------------------------------------------------------------------ numpy
def test_npz_arrays_and_structured(tmp_path):
    ev = sample()
    np.savez(tmp_path / "a.npz", x=ev.x, y=ev.y, t=ev.t_us, p=ev.p, sensor_size=np.array(SIZE))
    np.savez_compressed(tmp_path / "b.npz", events=ev.to_structured())
    assert_same(read_events(tmp_path / "a.npz", 10_000, 20_000), ev.window(10_000, 20_000))
    assert read_events(tmp_path / "a.npz").sensor_size == SIZE
    assert_same(read_events(tmp_path / "b.npz", sensor_size=SIZE), ev)
    info = event_file_info(tmp_path / "a.npz")
    assert (info.format, info.sensor_size, info.num_events, info.start_us, info.end_us) == (
        "npz", SIZE, len(ev), ev.start_us, ev.end_us)


def test_npy_structured_memmapped_window(tmp_path):
    ev = sample(2000)
    np.save(tmp_path / "e.npy", ev.to_structured())
    assert_same(read_events(tmp_path / "e.npy", 5_000, 6_000, sensor_size=SIZE), ev.window(5_000, 6_000))
    whole = read_events(tmp_path / "e.npy")
    assert whole.sensor_size == (int(ev.x.max()) + 1, int(ev.y.max()) + 1)
    info = event_file_info(tmp_path / "e.npy")
    assert (info.format, info.num_events, info.start_us, info.end_us) == ("npy", 2000, ev.start_us, ev.end_us)


def test_eventgpt_pickle_needs_opt_in_and_is_never_unpickled_without(tmp_path, monkeypatch):
    ev = sample()
    np.save(tmp_path / "clip.npy", {"x": ev.x, "y": ev.y, "p": ev.p, "t": ev.t_us}, allow_pickle=True)
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled without opt-in"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled without opt-in"))
    with pytest.raises(InputError, match="pickle.*allow_pickle=True"):
        read_events(tmp_path / "clip.npy")
    with pytest.raises(InputError, match="allow_pickle=True"):
        event_file_info(tmp_path / "clip.npy")
    assert detect_format(tmp_path / "clip.npy") == "eventgpt"
    monkeypatch.undo()
    got = read_events(tmp_path / "clip.npy", allow_pickle=True, sensor_size=SIZE)
    assert_same(got, ev)
    assert_same(read_events(tmp_path / "clip.npy", 0, 25_000, format="eventgpt", allow_pickle=True,
                            sensor_size=SIZE), ev.window(0, 25_000))


def test_npz_with_object_array_needs_opt_in(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([1, 2], dtype=object), y=[0, 0], t=[1, 2], p=[0, 1])
    with pytest.raises(InputError, match="allow_pickle"):
        read_events(tmp_path / "o.npz")


# ------------------------------------------------------------------------------------ text
def test_text_integer_microseconds_with_header_and_commas(tmp_path):
    ev = sample(200)
    rows = "\n".join(f"{t},{x},{y},{p}" for t, x, y, p in zip(ev.t_us, ev.x, ev.y, ev.p))
    (tmp_path / "e.csv").write_text("t,x,y,p\n" + rows + "\n")
    assert_same(read_events(tmp_path / "e.csv", sensor_size=SIZE), ev)
    info = event_file_info(tmp_path / "e.csv")
    assert (info.format, info.num_events, info.start_us, info.end_us) == ("csv", 200, ev.start_us, ev.end_us)


def test_text_float_seconds_like_ecd(tmp_path):
    (tmp_path / "events.txt").write_text("0.000001 3 4 1\n0.0015 5 6 0\n1.25 7 8 1\n")
    got = read_events(tmp_path / "events.txt", sensor_size=SIZE)
    assert got.t_us.tolist() == [1, 1500, 1_250_000] and got.x.tolist() == [3, 5, 7] and got.p.tolist() == [1, 0, 1]
    assert read_events(tmp_path / "events.txt", 1000, 2000, sensor_size=SIZE).t_us.tolist() == [1500]
    (tmp_path / "us.txt").write_text("1 3 4 1\n2 5 6 0\n")
    assert read_events(tmp_path / "us.txt", time_unit="s").t_us.tolist() == [1_000_000, 2_000_000]
    with pytest.raises(InputError, match="time_unit"):
        read_events(tmp_path / "us.txt", time_unit="ms")


def test_text_bad_lines(tmp_path):
    (tmp_path / "bad.txt").write_text("1 2 3 1\n2 2 3\n")
    with pytest.raises(InputError, match="bad.txt"):
        read_events(tmp_path / "bad.txt")


# ------------------------------------------------------------------------------------ generic HDF5
@pytest.mark.parametrize("group", ["", "events/"])
def test_generic_hdf5_root_or_group(tmp_path, group):
    ev = sample(1000)
    with h5py.File(tmp_path / "g.h5", "w") as f:
        for name, values in (("x", ev.x), ("y", ev.y), ("t", ev.t_us), ("p", ev.p)):
            f[group + name] = values
        f.attrs["width"], f.attrs["height"] = SIZE
    assert detect_format(tmp_path / "g.h5") == "hdf5"
    got = read_events(tmp_path / "g.h5", 7_000, 9_000)
    assert got.sensor_size == SIZE
    assert_same(got, ev.window(7_000, 9_000))
    info = event_file_info(tmp_path / "g.h5")
    assert (info.format, info.sensor_size, info.num_events, info.start_us) == ("hdf5", SIZE, 1000, ev.start_us)


def test_generic_hdf5_without_size_scans_maxima(tmp_path):
    ev = sample(300)
    with h5py.File(tmp_path / "g.hdf5", "w") as f:
        for name, values in (("x", ev.x), ("y", ev.y), ("t", ev.t_us), ("p", ev.p)):
            f[name] = values
    empty = read_events(tmp_path / "g.hdf5", 10**9, 10**9 + 1)
    assert len(empty) == 0 and empty.sensor_size == (int(ev.x.max()) + 1, int(ev.y.max()) + 1)


def test_generic_hdf5_missing_datasets(tmp_path):
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["x"], f["frames"] = np.zeros(3), np.zeros(3)
    with pytest.raises(InputError, match=r"lacks datasets .*'events/t'.*it has \['frames', 'x'\]"):
        read_events(tmp_path / "m.h5")


# ------------------------------------------------------------------------------------ detection
def test_detection_by_content_when_suffix_unknown(tmp_path):
    ev = sample(50)
    dsec = write_events(tmp_path / "e.h5", ev)
    renamed = tmp_path / "recording.bin"
    renamed.write_bytes(dsec.read_bytes())
    assert detect_format(renamed) == "dsec"
    np.save(tmp_path / "s.npy", ev.to_structured())
    (tmp_path / "s.data").write_bytes((tmp_path / "s.npy").read_bytes())
    assert detect_format(tmp_path / "s.data") == "npy"
    np.savez(tmp_path / "z.npz", x=ev.x, y=ev.y, t=ev.t_us, p=ev.p)
    (tmp_path / "z.bin").write_bytes((tmp_path / "z.npz").read_bytes())
    assert detect_format(tmp_path / "z.bin") == "npz"
    (tmp_path / "ev.log").write_text("10 1 2 1\n20 2 3 0\n")
    assert detect_format(tmp_path / "ev.log") == "txt"
    (tmp_path / "p.bin").write_bytes(b"% evt 3.0\n% end\n\x00\x00")
    assert detect_format(tmp_path / "p.bin") == "raw"
    assert_same(read_events(renamed), ev)


def test_format_override_and_unknown_format(tmp_path):
    (tmp_path / "e.dat").write_text("10 1 2 1\n20 2 3 0\n")
    assert read_events(tmp_path / "e.dat", format="txt").t_us.tolist() == [10, 20]
    with pytest.raises(InputError, match="unknown event file format 'mp4'.*dsec"):
        read_events(tmp_path / "e.dat", format="mp4")
    assert set(FORMATS) >= {"dsec", "hdf5", "npz", "npy", "txt", "csv", "evt2", "evt3", "raw", "dat", "aedat4", "eventgpt"}


def test_unrecognisable_content_lists_formats(tmp_path):
    (tmp_path / "x.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match="supported formats: dsec, hdf5"):
        read_events(tmp_path / "x.bin")
    (tmp_path / "fake.h5").write_text("not hdf5 at all")
    with pytest.raises(InputError, match="suffix '.h5' but its content is not HDF5"):
        read_events(tmp_path / "fake.h5")


def test_missing_file_directory_and_bad_window(tmp_path):
    with pytest.raises(InputFileNotFoundError, match="nope.h5"):
        read_events(tmp_path / "nope.h5")
    with pytest.raises(InputFileNotFoundError, match="nope.h5"):
        event_file_info(tmp_path / "nope.h5")
    with pytest.raises(InputError, match="expected a file, got a directory"):
        read_events(tmp_path)
    path = write_events(tmp_path / "e.h5", sample(10))
    with pytest.raises(InputError, match="start_us must be < end_us, got start_us=5, end_us=5"):
        read_events(path, 5, 5)
    with pytest.raises(InputError, match="start_us must be an integer"):
        read_events(path, 1.5, 10)


def test_inputs_not_mutated_by_writer(tmp_path):
    ev = sample(100)
    before = ev.t_us.copy()
    write_events(tmp_path / "e.h5", ev, t_offset_us=-5)
    np.testing.assert_array_equal(ev.t_us, before)
