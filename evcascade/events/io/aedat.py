"""iniVation AEDAT4 recordings (``.aedat4``, from DV), decoded by the maintained ``aedat`` package.

The file is a header naming its streams (id, type, sensor width/height) and then packets, each
belonging to one stream. The first event stream is read; frames, IMU and trigger packets are
skipped. Packets are decoded one at a time and reading stops at the first packet that reaches
the window's end (the format has no time index, so a window starts from the beginning).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from evcascade.errors import InputError
from evcascade.events.container import Events
from evcascade.events.io.common import EventFileInfo, assemble, first_unsorted, raise_unsorted
from evcascade.events.io.registry import EventFormat


def _open(path: Path):
    """An ``aedat.Decoder`` on ``path``, its first event stream's id, and that stream's (W, H)."""
    import aedat

    try:
        decoder = aedat.Decoder(str(path))
    except Exception as err:  # the Rust decoder raises plain exceptions for any malformed file
        raise InputError(f"{str(path)!r} is not a readable AEDAT4 file: {err}") from None
    streams = decoder.id_to_stream()
    event_ids = sorted(i for i, info in streams.items() if info.get("type") == "events")
    if not event_ids:
        kinds = sorted({info.get("type") for info in streams.values()})
        raise InputError(f"{str(path)!r}: AEDAT4 file has no event stream (it has {kinds})")
    info = streams[event_ids[0]]
    return decoder, event_ids[0], (int(info["width"]), int(info["height"]))


def _packets(path: Path, decoder, stream_id: int) -> Iterator[np.ndarray]:
    """Event packets (structured arrays t, x, y, on) of one stream, in file order."""
    iterator = iter(decoder)
    while True:
        try:
            packet = next(iterator)
        except StopIteration:
            return
        except Exception as err:  # a truncated packet surfaces here
            raise InputError(f"{str(path)!r}: could not decode an AEDAT4 packet (truncated or corrupt?): {err}") from None
        if packet.get("stream_id") == stream_id and "events" in packet:
            yield packet["events"]


def read_aedat4(
    path: Path,
    start_us: int | None,
    end_us: int | None,
    *,
    sort: bool = False,
    sensor_size: tuple[int, int] | None = None,
) -> Events:
    """Events in [start_us, end_us) of the first event stream; ``on`` becomes polarity 1."""
    decoder, stream_id, stored_size = _open(path)
    parts: list[tuple[np.ndarray, ...]] = []
    row, previous_t = 0, None
    for packet in _packets(path, decoder, stream_id):
        t_us = packet["t"].astype(np.int64)  # [n_packet]
        if not sort and t_us.shape[0]:
            joined = t_us if previous_t is None else np.concatenate([[previous_t], t_us])
            bad = first_unsorted(joined)
            if bad is not None:
                raise_unsorted(str(path), joined, bad, row_offset=row - (previous_t is not None))
            previous_t = int(t_us[-1])
        row += t_us.shape[0]
        parts.append((packet["x"], packet["y"], t_us, packet["on"]))
        if not sort and end_us is not None and t_us.shape[0] and t_us[-1] >= end_us:
            break
    if parts:
        x, y, t_us, p = (np.concatenate([part[i] for part in parts]) for i in range(4))
    else:
        x = y = t_us = p = np.zeros(0, np.int64)
    return assemble(str(path), x, y, t_us, p, sensor_size or stored_size,
                    start_us=start_us, end_us=end_us, sort=sort)


def aedat4_info(path: Path) -> EventFileInfo:
    """Summary of an AEDAT4 file; it has no index, so this decodes every packet (bounded memory)."""
    decoder, stream_id, size = _open(path)
    first = last = None
    n = 0
    for packet in _packets(path, decoder, stream_id):
        if packet.shape[0]:
            first = int(packet["t"][0]) if first is None else first
            last = int(packet["t"][-1])
            n += int(packet.shape[0])
    return EventFileInfo(path, "aedat4", size, first, None if last is None else last + 1, n)


def _sniff(path: Path, head: bytes) -> str | None:
    return "aedat4" if head.startswith(b"#!AER-DAT4.0") else None


def _read(path: Path, start_us, end_us, *, kind, sort, sensor_size, options) -> Events:
    return read_aedat4(path, start_us, end_us, sort=sort, sensor_size=sensor_size)


def _info(path: Path, *, kind, options) -> EventFileInfo:
    return aedat4_info(path)


FORMAT = EventFormat(
    names=("aedat4",), read=_read, info=_info, suffixes=(".aedat4",), aliases={"aedat": "aedat4"}, sniff=_sniff,
)
