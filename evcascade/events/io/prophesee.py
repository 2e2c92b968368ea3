"""Prophesee / Metavision recordings: ``.raw`` in EVT 2.0 or EVT 3.0, and ``.dat``.

Both start with ASCII header lines beginning with ``%`` (a ``.raw`` header ends with ``% end``):
``% evt 3.0`` or ``% format EVT3;height=720;width=1280`` names the encoding, ``% geometry 1280x720``
or ``% Width`` / ``% Height`` the sensor size. Bit layouts (little-endian words, type in the 4 MSBs;
https://docs.prophesee.ai/stable/data/encoding_formats/):

EVT 2.0, 32-bit words::

    CD_OFF 0x0 / CD_ON 0x1   [27:22] time LSBs (6)  [21:11] x  [10:0] y     t = TIME_HIGH << 6 | LSBs
    EVT_TIME_HIGH 0x8        [27:0] time MSBs (28)
    EXT_TRIGGER 0xA, OTHERS 0xE, CONTINUED 0xF: no CD events (skipped)

EVT 3.0, 16-bit words, a stateful stream::

    EVT_ADDR_Y 0x0     [10:0] y (current row)       EVT_ADDR_X 0x2   [11] p [10:0] x: one event
    VECT_BASE_X 0x3    [11] p [10:0] x base         VECT_12 0x4      [11:0] valid mask, then base += 12
    VECT_8 0x5         [7:0] valid mask, base += 8  EVT_TIME_LOW 0x6 / EVT_TIME_HIGH 0x8: 12 bits each
    t = TIME_HIGH << 12 | TIME_LOW (24 bits; TIME_HIGH dropping by over half its range = a wrap)

``.dat``: after the header, two bytes (event type, event size = 8), then records of a uint32
timestamp (us) and a uint32 with x in bits 0-13, y in bits 14-27, polarity in bits 28-31.

Decoding is vectorised per chunk of words (state carried between chunks); a ``.raw`` window read
decodes from the start of the file (the format has no index) and stops at the first chunk that
passes the window's end. A ``.dat`` file is memory-mapped and windowed by binary search.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from evcascade.errors import InputError
from evcascade.events.container import Events
from evcascade.events.io.common import EventFileInfo, assemble, first_unsorted, raise_unsorted, searchsorted_column
from evcascade.events.io.registry import EventFormat

_CHUNK_BYTES = 1 << 22  # 4 MiB of words per decoding step: bounded memory on multi-GB recordings
DAT_RECORD = np.dtype([("t", "<u4"), ("data", "<u4")])


# ---------------------------------------------------------------------------------------- header
def read_header(path: Path) -> tuple[list[str], int]:
    """The ``%`` header lines (without '%' and line ends) and the byte offset where data starts."""
    lines: list[str] = []
    with open(path, "rb") as handle:
        while True:
            position = handle.tell()
            if handle.read(1) != b"%":
                handle.seek(position)
                break
            line = handle.readline()
            lines.append(line.decode("latin-1").strip())
            if lines[-1] == "end":
                break
        return lines, handle.tell()


def header_fields(lines: list[str]) -> dict[str, str]:
    """Header lines as lower-case keyword -> value (``% geometry 640x480`` -> {'geometry': '640x480'})."""
    fields: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        fields[key.lower()] = value.strip()
    return fields


def raw_encoding(fields: dict[str, str]) -> str | None:
    """'evt2' or 'evt3' from ``% evt X.Y`` or ``% format EVTn;...``; None when the header does not say."""
    version = fields.get("evt", "").strip()
    if not version and "format" in fields:
        version = fields["format"].split(";")[0].strip().upper().replace("EVT", "")
    return {"2.0": "evt2", "2": "evt2", "3.0": "evt3", "3": "evt3"}.get(version.lower() if version else "")


def header_sensor_size(fields: dict[str, str]) -> tuple[int, int] | None:
    """(W, H) from ``geometry WxH``, ``format ...;width=W;height=H`` or ``Width`` / ``Height`` lines."""
    if "geometry" in fields:
        width, _, height = fields["geometry"].lower().partition("x")
        if width.strip().isdigit() and height.strip().isdigit():
            return int(width), int(height)
    if "format" in fields:
        options = dict(part.split("=", 1) for part in fields["format"].split(";")[1:] if "=" in part)
        if "width" in options and "height" in options:
            return int(options["width"]), int(options["height"])
    if fields.get("width", "").isdigit() and fields.get("height", "").isdigit():
        return int(fields["width"]), int(fields["height"])
    return None


# ---------------------------------------------------------------------------------------- decoders
def forward_fill(is_set: np.ndarray, values: np.ndarray, initial: int) -> np.ndarray:
    """For each word, the value set by the latest word at or before it (``initial`` before any).

    >>> forward_fill(np.array([False, True, False, True]), np.array([7, 9]), 0).tolist()
    [0, 7, 7, 9]
    """
    latest = np.cumsum(is_set) - 1  # [n] index into values, -1 before the first set
    table = np.concatenate([np.array([initial], np.int64), values.astype(np.int64)])
    return table[latest + 1]


def _unwrap(raw: np.ndarray, prev_raw: int, loops: int, bits: int) -> tuple[np.ndarray, int, int]:
    """Counter values -> monotonic values, counting wraps of the ``bits``-wide counter.

    Only a drop of more than half the counter's range is a wrap; a smaller drop is out-of-order
    data, left as is so that the sortedness check reports it (as Prophesee's decoders do).
    """
    if raw.shape[0] == 0:
        return raw.astype(np.int64), prev_raw, loops
    steps = np.diff(np.concatenate([[prev_raw], raw]).astype(np.int64))  # [n_set]
    wraps = loops + np.cumsum(steps < -(1 << (bits - 1)))
    return raw.astype(np.int64) + (wraps << bits), int(raw[-1]), int(wraps[-1])


class Evt2State(NamedTuple):
    """Decoder state between chunks: the last TIME_HIGH and how often it wrapped."""

    high_raw: int = 0
    loops: int = 0


class Evt3State(NamedTuple):
    """Decoder state between chunks of an EVT 3.0 stream."""

    y: int = 0
    time_low: int = 0
    high_raw: int = 0
    loops: int = 0
    base_x: int = 0  # running vector base (already advanced past earlier vectors)
    vector_p: int = 0


class Decoded(NamedTuple):
    x: np.ndarray
    y: np.ndarray
    t_us: np.ndarray
    p: np.ndarray


def decode_evt2(words: np.ndarray, state: Evt2State = Evt2State()) -> tuple[Decoded, Evt2State]:
    """CD events from EVT 2.0 words (uint32), and the state to decode the next chunk with."""
    words = words.astype(np.int64)
    kind = words >> 28  # [n]
    is_high = kind == 0x8
    high, high_raw, loops = _unwrap(words[is_high] & 0x0FFFFFFF, state.high_raw, state.loops, 28)
    high_now = forward_fill(is_high, high, state.high_raw + (state.loops << 28))  # [n]
    cd = kind <= 0x1
    cd_words = words[cd]
    decoded = Decoded(
        x=(cd_words >> 11) & 0x7FF,
        y=cd_words & 0x7FF,
        t_us=(high_now[cd] << 6) | ((cd_words >> 22) & 0x3F),
        p=kind[cd],
    )
    return decoded, Evt2State(high_raw, loops)


def decode_evt3(words: np.ndarray, state: Evt3State = Evt3State()) -> tuple[Decoded, Evt3State]:
    """CD events from EVT 3.0 words (uint16), in stream order, and the state for the next chunk."""
    if words.shape[0] == 0:
        empty = np.zeros(0, np.int64)
        return Decoded(empty, empty, empty, empty), state
    words = words.astype(np.int64)
    kind, payload = words >> 12, words & 0xFFF  # [n], [n]
    is_y, is_low, is_high = kind == 0x0, kind == 0x6, kind == 0x8
    y_now = forward_fill(is_y, payload[is_y] & 0x7FF, state.y)  # [n]
    low_now = forward_fill(is_low, payload[is_low], state.time_low)
    high, high_raw, loops = _unwrap(payload[is_high], state.high_raw, state.loops, 12)
    high_now = forward_fill(is_high, high, state.high_raw + (state.loops << 12))
    t_now = (high_now << 12) | low_now  # [n] time in force at each word

    # Vector x: base set by VECT_BASE_X, advanced by 12 / 8 after each VECT_12 / VECT_8.
    step = np.where(kind == 0x4, 12, np.where(kind == 0x5, 8, 0))  # [n]
    advanced = np.cumsum(step) - step  # [n] advance before this word since the chunk start
    is_base = kind == 0x3
    anchor = forward_fill(is_base, (payload[is_base] & 0x7FF) - advanced[is_base], state.base_x)
    vector_p = forward_fill(is_base, payload[is_base] >> 11, state.vector_p)
    vec_words = np.flatnonzero(step)  # [n_vec]
    masks = payload[vec_words] & np.where(step[vec_words] == 12, 0xFFF, 0xFF)
    rows, bits = np.nonzero((masks[:, None] >> np.arange(12)) & 1)  # row-major: word order, then bit
    vec_word = vec_words[rows]
    single_word = np.flatnonzero(kind == 0x2)

    word = np.concatenate([single_word, vec_word])
    x = np.concatenate([payload[single_word] & 0x7FF, anchor[vec_word] + advanced[vec_word] + bits])
    p = np.concatenate([payload[single_word] >> 11, vector_p[vec_word]])
    order = np.argsort(word, kind="stable")  # merge singles and vectors back into stream order
    word = word[order]
    decoded = Decoded(x=x[order], y=y_now[word], t_us=t_now[word], p=p[order])
    next_state = Evt3State(
        y=int(y_now[-1]), time_low=int(low_now[-1]), high_raw=high_raw, loops=loops,
        base_x=int(anchor[-1] + advanced[-1] + step[-1]), vector_p=int(vector_p[-1]),
    )
    return decoded, next_state


def _decode_stream(path: Path, offset: int, encoding: str) -> Iterator[Decoded]:
    """Decoded chunks of a ``.raw`` file, in order (a trailing partial word is ignored)."""
    dtype, decode, state = (
        (np.dtype("<u4"), decode_evt2, Evt2State()) if encoding == "evt2" else (np.dtype("<u2"), decode_evt3, Evt3State())
    )
    with open(path, "rb") as handle:
        handle.seek(offset)
        while True:
            buffer = handle.read(_CHUNK_BYTES)
            if not buffer:
                return
            words = np.frombuffer(buffer, dtype=dtype, count=len(buffer) // dtype.itemsize)
            decoded, state = decode(words, state)
            yield decoded


def _raw_header(path: Path, encoding: str | None) -> tuple[str, tuple[int, int] | None, int]:
    lines, offset = read_header(path)
    fields = header_fields(lines)
    found = raw_encoding(fields)
    if encoding in (None, "raw"):
        stated = fields.get("evt") or fields.get("format", "").split(";")[0]
        if found is None and stated:
            raise InputError(
                f"{str(path)!r}: the .raw header names encoding {stated!r}; only EVT 2.0 and EVT 3.0 are supported"
            )
        if found is None:
            raise InputError(
                f"{str(path)!r}: the .raw header does not say whether it is EVT 2.0 or EVT 3.0 "
                "(no '% evt' or '% format' line); pass format='evt2' or format='evt3'"
            )
        encoding = found
    return encoding, header_sensor_size(fields), offset


def read_raw(
    path: Path,
    start_us: int | None,
    end_us: int | None,
    *,
    encoding: str | None = None,
    sort: bool = False,
    sensor_size: tuple[int, int] | None = None,
) -> Events:
    """Events in [start_us, end_us) from a Prophesee ``.raw`` (EVT 2.0 / 3.0), decoding chunk by chunk.

    Decoding stops at the first chunk whose last event is at or past ``end_us``; with ``sort=True``
    the whole file is decoded and sorted.
    """
    encoding, stored_size, offset = _raw_header(path, encoding)
    size = sensor_size or stored_size
    if size is None:
        raise InputError(f"{str(path)!r}: the .raw header gives no sensor geometry; pass sensor_size=(W, H)")
    parts: list[Decoded] = []
    row, previous_t = 0, None
    for chunk in _decode_stream(path, offset, encoding):
        t_us = chunk.t_us
        if not sort and t_us.shape[0]:
            joined = t_us if previous_t is None else np.concatenate([[previous_t], t_us])
            bad = first_unsorted(joined)
            if bad is not None:
                shift = 0 if previous_t is None else 1
                raise_unsorted(str(path), joined, bad, row_offset=row - shift)
            previous_t = int(t_us[-1])
            lo = 0 if start_us is None else int(np.searchsorted(t_us, start_us, side="left"))
            hi = t_us.shape[0] if end_us is None else int(np.searchsorted(t_us, end_us, side="left"))
            chunk = Decoded(*(field[lo:hi] for field in chunk))
        row += t_us.shape[0]
        parts.append(chunk)
        if not sort and end_us is not None and t_us.shape[0] and t_us[-1] >= end_us:
            break
    fields = [np.concatenate([part[i] for part in parts]) if parts else np.zeros(0, np.int64) for i in range(4)]
    x, y, t_us, p = fields
    return assemble(str(path), x, y, t_us, p, size, start_us=start_us, end_us=end_us, sort=sort)


def raw_info(path: Path, encoding: str | None = None) -> EventFileInfo:
    """Summary of a ``.raw`` file; the format has no index, so this decodes it all (in bounded memory)."""
    encoding, size, offset = _raw_header(path, encoding)
    first = last = None
    n = 0
    for chunk in _decode_stream(path, offset, encoding):
        if chunk.t_us.shape[0]:
            first = int(chunk.t_us[0]) if first is None else first
            last = int(chunk.t_us[-1])
            n += chunk.t_us.shape[0]
    return EventFileInfo(path, encoding, size, first, None if last is None else last + 1, n)


# ---------------------------------------------------------------------------------------- .dat
def _dat_records(path: Path) -> tuple[np.ndarray, tuple[int, int] | None]:
    """The memory-mapped records of a ``.dat`` file and the header's sensor size."""
    lines, offset = read_header(path)
    with open(path, "rb") as handle:
        handle.seek(offset)
        type_and_size = handle.read(2)
    if len(type_and_size) < 2:
        raise InputError(f"{str(path)!r}: .dat file ends before its event type/size bytes (truncated?)")
    if type_and_size[1] != DAT_RECORD.itemsize:
        raise InputError(
            f"{str(path)!r}: .dat event size is {type_and_size[1]} bytes; only 8-byte CD events are supported"
        )
    n = (path.stat().st_size - offset - 2) // DAT_RECORD.itemsize
    if n == 0:
        records = np.zeros(0, DAT_RECORD)
    else:
        records = np.memmap(path, dtype=DAT_RECORD, mode="r", offset=offset + 2, shape=(n,))
    return records, header_sensor_size(header_fields(lines))


def _unpack_dat(records: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = np.asarray(records["data"]).astype(np.int64)  # [n]
    return data & 0x3FFF, (data >> 14) & 0x3FFF, np.asarray(records["t"]).astype(np.int64), (data >> 28) & 0xF


def read_dat(
    path: Path,
    start_us: int | None,
    end_us: int | None,
    *,
    sort: bool = False,
    sensor_size: tuple[int, int] | None = None,
) -> Events:
    """Events in [start_us, end_us) from a ``.dat``, reading only the window's records.

    Without header Width/Height (or ``sensor_size``) the sensor size is the maxima of x and y over
    the whole file, which reads it all; so does ``sort=True``.
    """
    records, stored_size = _dat_records(path)
    size = sensor_size or stored_size
    if sort or size is None:
        x, y, t_us, p = _unpack_dat(records)
        return assemble(str(path), x, y, t_us, p, size, start_us=start_us, end_us=end_us, sort=sort)
    times = records["t"]
    lo = 0 if start_us is None else searchsorted_column(times, start_us)
    hi = records.shape[0] if end_us is None else searchsorted_column(times, end_us, lo)
    x, y, t_us, p = _unpack_dat(records[lo:hi])
    return assemble(str(path), x, y, t_us, p, size, row_offset=lo)


def dat_info(path: Path) -> EventFileInfo:
    """Summary of a ``.dat`` from its size and first/last records (cheap)."""
    records, size = _dat_records(path)
    n = int(records.shape[0])
    start, end = (int(records["t"][0]), int(records["t"][n - 1]) + 1) if n else (None, None)
    return EventFileInfo(path, "dat", size, start, end, n)


# ---------------------------------------------------------------------------------------- registry
def _sniff(path: Path, head: bytes) -> str | None:
    """A ``%`` header: ``raw`` when it names an EVT encoding or ends with ``% end``, else ``dat``."""
    if not head.startswith(b"%"):
        return None
    fields = header_fields(read_header(path)[0])
    return "raw" if raw_encoding(fields) is not None or "evt" in fields or "end" in fields else "dat"


def _read(path: Path, start_us, end_us, *, kind, sort, sensor_size, options) -> Events:
    if kind == "dat":
        return read_dat(path, start_us, end_us, sort=sort, sensor_size=sensor_size)
    return read_raw(path, start_us, end_us, encoding=kind, sort=sort, sensor_size=sensor_size)


def _info(path: Path, *, kind, options) -> EventFileInfo:
    return dat_info(path) if kind == "dat" else raw_info(path, kind)


FORMAT = EventFormat(
    names=("evt2", "evt3", "raw", "dat"), read=_read, info=_info, suffixes=(".raw", ".dat"),
    suffix_names={".raw": "raw", ".dat": "dat"}, aliases={"evt2.0": "evt2", "evt3.0": "evt3"},
    sniff=_sniff, sniff_rank=50,
)
