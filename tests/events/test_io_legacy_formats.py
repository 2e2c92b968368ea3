"""Event Stream (.es, DVS), jAER AEDAT 2.0 and cAER AEDAT 3.1: bytes written here from each format's
specification (independently of the readers), read back whole and windowed."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from io_helpers import random_events, write_aedat4

from evcascade.errors import InputError
from evcascade.events.io import detect_format, event_file_info, read_events


def _sorted_events(n, size, seed=0, duration_us=200_000):
    x, y, t, p = random_events(n, size, t0_us=0, duration_us=duration_us, seed=seed)
    return x, y, t, p


def assert_same(got, x, y, t, p, start=None, end=None):
    keep = np.ones(len(t), bool)
    if start is not None:
        keep &= t >= start
    if end is not None:
        keep &= t < end
    np.testing.assert_array_equal(got.t_us, t[keep])
    np.testing.assert_array_equal(got.x, x[keep])
    np.testing.assert_array_equal(got.y, y[keep])
    np.testing.assert_array_equal(got.p, p[keep])


# ------------------------------------------------------------------------------------ Event Stream
def write_es(path, x, y, t, p, size, stream_type=1, version=(2, 0, 0)):
    out = bytearray(b"Event Stream" + bytes([*version, stream_type]) + struct.pack("<HH", *size))
    previous = 0
    for i, (xi, yi, ti, pi) in enumerate(zip(x, y, t, p)):
        step = int(ti) - previous
        previous = int(ti)
        while step >= 127:
            out.append(0xFF)  # overflow: +127 us
            step -= 127
        if i == 10:
            out += b"\xfe" * 5  # reset bytes, five at a time, as the spec asks
        out += bytes([(step << 1) | int(pi)]) + struct.pack("<HH", int(xi), int(yi))
    path.write_bytes(bytes(out))
    return path


def test_event_stream_round_trip_across_chunks(tmp_path, monkeypatch):
    import evcascade.events.io.event_stream as es

    size = (300, 260)  # x reaches 254 / 255: data bytes equal to the reset / overflow markers
    x, y, t, p = _sorted_events(3000, size, duration_us=2_000_000)  # steps up to ~5 ms: overflow runs
    x[:40] = np.arange(240, 280)
    path = write_es(tmp_path / "rec.es", x, y, t, p, size)
    assert detect_format(path) == "es"
    assert_same(read_events(path), x, y, t, p)
    monkeypatch.setattr(es, "_CHUNK_BYTES", 37)  # events and overflow runs cut by chunk ends
    got = read_events(path)
    assert got.sensor_size == size
    assert_same(got, x, y, t, p)
    assert_same(read_events(path, 500_000, 900_000), x, y, t, p, 500_000, 900_000)
    info = event_file_info(path)
    assert (info.format, info.sensor_size, info.num_events, info.start_us, info.end_us) == (
        "es", size, 3000, int(t[0]), int(t[-1]) + 1)


def test_event_stream_other_types_versions_and_truncation(tmp_path):
    x, y, t, p = _sorted_events(20, (32, 32))
    with pytest.raises(InputError, match="ATIS events; only DVS streams"):
        read_events(write_es(tmp_path / "atis.es", x, y, t, p, (32, 32), stream_type=2))
    with pytest.raises(InputError, match="version 1.0.0; only version 2.x"):
        read_events(write_es(tmp_path / "v1.es", x, y, t, p, (32, 32), version=(1, 0, 0)))
    whole = write_es(tmp_path / "cut.es", x, y, t, p, (32, 32))
    whole.write_bytes(whole.read_bytes()[:-2])
    with pytest.raises(InputError, match="ends inside an event"):
        read_events(whole)


# ------------------------------------------------------------------------------------ AEDAT 2.0
def write_aedat2(path, x, y, t, p, chip, size, extra_records=()):
    width, height = size
    header = f"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n# AEChip: {chip}\r\n".encode()
    if "DVS128" in chip:
        address = ((height - 1 - y) << 8) | ((127 - x) << 1) | p
    else:
        address = ((height - 1 - y) << 22) | ((width - 1 - x) << 12) | (p << 11)
    records = np.zeros(len(t) + len(extra_records), [("address", ">u4"), ("t", ">u4")])
    records["address"][: len(t)], records["t"][: len(t)] = address, t
    for k, (addr, at) in enumerate(extra_records):
        records[len(t) + k] = (addr, at)
    order = np.argsort(records["t"], kind="stable")
    path.write_bytes(header + records[order].tobytes())
    return path


@pytest.mark.parametrize("chip,size", [("ch.unizh.ini.jaer.chip.retina.DVS128", (128, 128)),
                                       ("eu.seebetter.ini.chips.davis.DAVIS240C", (240, 180))])
def test_aedat2_round_trip(tmp_path, chip, size):
    x, y, t, p = _sorted_events(500, size, seed=4)
    t = t + 10  # APS / IMU samples at time 0..1 sort first and must be skipped
    extra = [(1 << 31 | 5 << 12, 0), (1 << 10, 1)] if "DAVIS" in chip else []
    path = write_aedat2(tmp_path / "rec.aedat", x, y, t, p, chip, size, extra)
    assert detect_format(path) == "aedat2"
    got = read_events(path)
    assert got.sensor_size == size
    assert_same(got, x, y, t, p)
    assert_same(read_events(path, 50_000, 120_000), x, y, t, p, 50_000, 120_000)
    assert event_file_info(path).num_events == 500


def test_aedat2_unknown_chip_and_suffix_dispatch(tmp_path):
    x, y, t, p = _sorted_events(10, (64, 48))
    with pytest.raises(InputError, match="names no chip this reader knows"):
        read_events(write_aedat2(tmp_path / "u.aedat", x, y, t, p, "SomeOtherChip", (64, 48)))
    four = write_aedat4(tmp_path / "rec.aedat", x, y, t, p, (64, 48))  # an AEDAT4 file named .aedat
    assert detect_format(four) == "aedat4"
    assert_same(read_events(four), x, y, t, p)


# ------------------------------------------------------------------------------------ AEDAT 3.1
def _packet(kind, events, overflow=0, size=8):
    number = len(events) // size
    return struct.pack("<hhiiiiii", kind, 1, size, 4, overflow, number, number, number) + events


def _polarity_events(x, y, t_low, p, valid=None):
    valid = np.ones(len(x), np.int64) if valid is None else valid
    records = np.zeros(len(x), [("data", "<u4"), ("t", "<i4")])
    records["data"] = (np.asarray(x) << 17) | (np.asarray(y) << 2) | (np.asarray(p) << 1) | valid
    records["t"] = t_low
    return records.tobytes()


def test_aedat31_round_trip_with_overflow_invalid_and_other_packets(tmp_path):
    size = (346, 260)
    x, y, t, p = _sorted_events(600, size, seed=5)
    big = (1 << 31) + 1_000  # the second half lies past a 31-bit overflow
    t = np.concatenate([t[:300], t[300:] + big])
    header = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DAVIS346B\r\n#!END-HEADER\r\n"
    body = _packet(1, _polarity_events(x[:300], y[:300], t[:300], p[:300]))
    body += _packet(2, b"\0" * 40, size=20)  # a frame packet: skipped
    invalid = _polarity_events([1, 2], [3, 4], [t[299], t[299]], [1, 1], valid=np.zeros(2, np.int64))
    body += _packet(1, invalid)  # events with the valid bit clear: skipped
    body += _packet(1, _polarity_events(x[300:], y[300:], t[300:] - (1 << 31), p[300:]), overflow=1)
    path = tmp_path / "rec.aedat"
    path.write_bytes(header + body)
    assert detect_format(path) == "aedat3"
    got = read_events(path)
    assert got.sensor_size == size
    assert_same(got, x, y, t, p)
    assert_same(read_events(path, int(t[280]), int(t[320])), x, y, t, p, int(t[280]), int(t[320]))
    info = event_file_info(path)
    assert (info.format, info.num_events, info.end_us) == ("aedat3", 600, int(t[-1]) + 1)
    path.write_bytes(header + body[:-5])
    with pytest.raises(InputError, match="truncated"):
        read_events(path)
