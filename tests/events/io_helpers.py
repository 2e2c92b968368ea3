"""Test-local writers for event files: Prophesee EVT 2.0 / EVT 3.0 / .dat encoders and an AEDAT4 writer.

They are written from the format specifications (independently of the readers under test) so that
a read-back round trip shows the decoder agrees with the specification, not with itself.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def random_events(n: int, sensor_size=(64, 48), t0_us: int = 0, duration_us: int = 100_000, seed: int = 0):
    """Sorted random events as plain arrays (x, y, t_us, p)."""
    rng = np.random.default_rng(seed)
    width, height = sensor_size
    t_us = np.sort(rng.integers(t0_us, t0_us + duration_us, n)).astype(np.int64)
    return rng.integers(0, width, n), rng.integers(0, height, n), t_us, rng.integers(0, 2, n)


# ------------------------------------------------------------------------------------ Prophesee
def encode_evt2(x, y, t_us, p) -> np.ndarray:
    """EVT 2.0 words: a TIME_HIGH word whenever t >> 6 changes, then one CD word per event."""
    words = []
    high = None
    for xi, yi, ti, pi in zip(x, y, t_us, p):
        ti = int(ti)
        if ti >> 6 != high:
            high = ti >> 6
            words.append((0x8 << 28) | (high & 0x0FFFFFFF))
        words.append((int(pi) << 28) | ((ti & 0x3F) << 22) | (int(xi) << 11) | int(yi))
    return np.array(words, dtype="<u4")


def encode_evt3(x, y, t_us, p, use_vectors: bool = True) -> np.ndarray:
    """EVT 3.0 words. Events with the same (t, y, p) and nearby x become VECT_12 / VECT_8 words."""
    words: list[int] = []
    state = {"high": None, "low": None, "y": None}
    order = np.lexsort((x, p, y, t_us))  # group equal (t, y, p) runs, x ascending inside a run
    x, y, t_us, p = (np.asarray(a)[order] for a in (x, y, t_us, p))
    i = 0
    while i < len(t_us):
        ti, yi, pi = int(t_us[i]), int(y[i]), int(p[i])
        if (ti >> 12) != state["high"]:
            state["high"] = ti >> 12
            words.append((0x8 << 12) | ((ti >> 12) & 0xFFF))
            state["low"] = None
        if (ti & 0xFFF) != state["low"]:
            state["low"] = ti & 0xFFF
            words.append((0x6 << 12) | (ti & 0xFFF))
        if yi != state["y"]:
            state["y"] = yi
            words.append(yi & 0x7FF)
        j = i
        while j < len(t_us) and int(t_us[j]) == ti and int(y[j]) == yi and int(p[j]) == pi:
            j += 1
        xs = sorted(set(int(v) for v in x[i:j]))
        if not use_vectors or len(xs) == 1:
            words.extend((0x2 << 12) | (pi << 11) | xv for xv in xs)
        else:
            base = xs[0]
            words.append((0x3 << 12) | (pi << 11) | base)
            while True:
                remaining = [xv for xv in xs if xv >= base]
                if not remaining:
                    break
                width = 12 if remaining[-1] - base >= 8 else 8
                mask = sum(1 << (xv - base) for xv in remaining if xv - base < width)
                words.append(((0x4 if width == 12 else 0x5) << 12) | mask)
                base += width
        i = j
    return np.array(words, dtype="<u2")


def write_raw(path: Path, words: np.ndarray, evt: str, sensor_size=(64, 48), header_style: str = "evt") -> Path:
    """A Prophesee .raw: '%' header lines, '% end', then the words."""
    width, height = sensor_size
    if header_style == "evt":
        header = f"% camera_integrator_name Prophesee\n% evt {evt}\n% geometry {width}x{height}\n% end\n"
    elif header_style == "format":
        header = f"% format EVT{evt[0]};height={height};width={width}\n% end\n"
    else:
        header = "% camera_integrator_name Prophesee\n% end\n"
    path.write_bytes(header.encode() + words.tobytes())
    return path


def write_dat(path: Path, x, y, t_us, p, sensor_size=(64, 48)) -> Path:
    width, height = sensor_size
    header = f"% Data file containing CD events\n% Version 2\n% Width {width}\n% Height {height}\n".encode()
    records = np.empty(len(t_us), dtype=[("t", "<u4"), ("data", "<u4")])
    records["t"] = t_us
    records["data"] = np.asarray(x, np.uint32) | (np.asarray(y, np.uint32) << 14) | (np.asarray(p, np.uint32) << 28)
    path.write_bytes(header + bytes([12, 8]) + records.tobytes())
    return path


# ------------------------------------------------------------------------------------ AEDAT4
_AEDAT_MAGIC = b"#!AER-DAT4.0\r\n"


def _ioheader(description: str) -> bytes:
    """Unprefixed flatbuffer `Ioheader` with only `description` set (defaults: no compression, -1)."""
    text = description.encode()
    vtable = struct.pack("<HHHHH", 10, 8, 0, 0, 4)  # at 8: vtable size, table size, 3 field offsets
    body = struct.pack("<I", 20) + b"IOHE" + vtable + b"\0\0"  # root table at 20
    body += struct.pack("<iI", 20 - 8, 4) + struct.pack("<I", len(text)) + text + b"\0"
    return body + b"\0" * (-len(body) % 8)


def _event_packet(t_us, x, y, on) -> bytes:
    """Size-prefixed flatbuffer `EventPacket` ('EVTS'); offsets aligned from the prefixed start."""
    elements = np.zeros(len(t_us), dtype=np.dtype({"names": ["t", "x", "y", "on"],
                                                    "formats": ["<i8", "<i2", "<i2", "u1"],
                                                    "offsets": [0, 8, 10, 12], "itemsize": 16}))
    elements["t"], elements["x"], elements["y"], elements["on"] = t_us, x, y, on
    body = struct.pack("<I", 16) + b"EVTS" + struct.pack("<HHH", 6, 8, 4) + b"\0\0"  # vtable at 12, table at 20
    body += struct.pack("<iI", 20 - 12, 4) + struct.pack("<I", len(t_us)) + elements.tobytes()
    return struct.pack("<I", len(body)) + body


def write_aedat4(path: Path, x, y, t_us, p, sensor_size=(64, 48), packet_events: int = 50) -> Path:
    width, height = sensor_size
    description = (
        '<dv version="2.0"><node name="outInfo" path="/mainloop/Recorder/outInfo/">'
        '<node name="0" path="/mainloop/Recorder/outInfo/0/">'
        '<attr key="compression" type="string">NONE</attr>'
        '<attr key="originalModuleName" type="string">capture</attr>'
        '<attr key="typeIdentifier" type="string">EVTS</attr>'
        f'<node name="info" path="/mainloop/Recorder/outInfo/0/info/">'
        f'<attr key="sizeX" type="int">{width}</attr><attr key="sizeY" type="int">{height}</attr>'
        "</node></node></node></dv>"
    )
    header = _ioheader(description)
    out = _AEDAT_MAGIC + struct.pack("<I", len(header)) + header
    for lo in range(0, len(t_us), packet_events):
        sl = slice(lo, lo + packet_events)
        packet = _event_packet(t_us[sl], x[sl], y[sl], p[sl])
        out += struct.pack("<II", 0, len(packet)) + packet
    path.write_bytes(out)
    return path
