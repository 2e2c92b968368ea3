"""Events from ROS 1 / ROS 2 bags (``.bag``, ROS 2 folder, ``.db3``, ``.mcap``), via ``evcascade.bags``.

Message layouts read (the event topic is the bag's only topic of these types, or ``topic=``):

=====================================  =============================================================
event_camera_msgs/EventPacket          packed ``events`` bytes; encodings ``evt3`` (decoded by
event_array_msgs/EventArray            ``prophesee.decode_evt3``, state carried across packets),
                                       ``mono`` (64-bit: p<<63 | y<<48 | x<<32 | dt_ns), ``libcaer``
                                       (uint32 data: x<<17 | y<<2 | p<<1, int32 t_us) and ``libcaer_cmp``
                                       (16-bit words, see ``_decode_libcaer_cmp``). ``trigger`` packets
                                       (no CD events) and unknown encodings are a clear error.
dvs_msgs/EventArray                    one ``Event`` (x, y, ts, polarity) per event
prophesee_event_msgs/EventArray        the same layout
=====================================  =============================================================

The clock (microseconds): per-event messages carry absolute ROS times, used as they are
(``sec * 1e6 + nanosec // 1000``). Packed encodings carry sensor time (evt3: the payload's 24-bit
time, unwrapped; mono: ``time_base + dt``; libcaer: ``time_base + t * 1000``; libcaer_cmp:
``time_base + (high << 12 | low) * 1000``, ns, as event_camera_codecs decodes them); it is put on the
ROS clock by one offset: the topic's first event sits at its packet's header stamp
(``t = sensor_t + stamp(first packet) - sensor_t(first event)``). One offset keeps event times as
monotonic as the sensor's (per-packet stamps jitter with host latency); it does not follow drift
between sensor and host clocks.

Windowed reads use the bag's time index: the window's start is mapped to record time (the offset
between the topic's first record time and header clock), read from there minus a margin (1 s,
doubled until the first event read lies before the window), and reading stops at the first packet
whose first event is at or past the window's end; events are then cut exactly to [start_us, end_us).
(A single packet spanning more than the margin, recorded before it, would be missed: drivers publish
packets of about a millisecond.)
An EVT3 stream entered mid-way is decoded from the first point where its state is known (a
TIME_HIGH, then TIME_LOW and ADDR_Y), with the TIME_HIGH wrap count taken from the header stamp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from evcascade.bags import BAG_SUFFIXES, choose_topic, is_bag, messages, open_bag, stamp_ns
from evcascade.errors import InputError
from evcascade.events.container import Events
from evcascade.events.io.aedat3 import POLARITY_EVENT, decode_polarity
from evcascade.events.io.common import EventFileInfo, assemble
from evcascade.events.io.prophesee import Decoded, Evt3State, decode_evt3, forward_fill
from evcascade.events.io.registry import EventFormat

PACKET_TYPES = ("event_camera_msgs/msg/EventPacket", "event_array_msgs/msg/EventArray")
ARRAY_TYPES = ("dvs_msgs/msg/EventArray", "prophesee_event_msgs/msg/EventArray")
EVENT_TYPES = PACKET_TYPES + ARRAY_TYPES
ENCODINGS = ("evt3", "mono", "libcaer", "libcaer_cmp")
_UNSUPPORTED = {"trigger": "external trigger events only, no CD events"}
_MARGIN_NS = 1_000_000_000
_MAX_PENDING_WORDS = 1 << 20
_EMPTY = np.zeros(0, np.int64)


class _Packet(NamedTuple):
    """One message's events on the sensor clock (packed) or the ROS clock (per-event), µs."""

    x: np.ndarray
    y: np.ndarray
    t_us: np.ndarray
    p: np.ndarray


# ------------------------------------------------------------------------------------ payload decoders
def _decode_mono(payload: np.ndarray, time_base_ns: int) -> _Packet:
    words = np.frombuffer(payload.tobytes(), "<u8", count=payload.shape[0] // 8).astype(np.uint64)  # [n]
    t_ns = np.int64(time_base_ns) + (words & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return _Packet(((words >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.int64),
                   ((words >> np.uint64(48)) & np.uint64(0x7FFF)).astype(np.int64),
                   t_ns // 1000, (words >> np.uint64(63)).astype(np.int64))


def _decode_libcaer(payload: np.ndarray, time_base_ns: int) -> _Packet:
    records = np.frombuffer(payload.tobytes(), POLARITY_EVENT, count=payload.shape[0] // 8)
    x, y, p, _ = decode_polarity(records["data"])  # libcaer's polarity word, as in AEDAT 3.1
    t_low_us = records["t"].astype(np.int64)  # [n]
    # The 31-bit microsecond counter may roll over inside a packet (libcaer's polarity.h / event_camera_codecs).
    rollovers = np.concatenate([[0], np.cumsum(np.diff(t_low_us) < 0)]) if t_low_us.shape[0] else _EMPTY
    t_ns = np.int64(time_base_ns) + (t_low_us + (rollovers << 31)) * 1000
    return _Packet(x, y, t_ns // 1000, p)


class _CmpState(NamedTuple):
    """libcaer_cmp decoder state carried between packets (as event_camera_codecs' decoder keeps it)."""

    x: int = 0
    base_y: int = 0
    vector_p: int = 0


def _decode_libcaer_cmp(payload: np.ndarray, time_base_ns: int, state: _CmpState) -> tuple[_Packet, _CmpState]:
    """Compressed libcaer words (uint16, code in the 4 MSBs), the layout of event_camera_codecs' decoder.

    Codes: 0 TIME_HIGH [11:0] (time bits 23:12), 1 TIME_LOW [11:0], 2 ADDR_X [10:0], 3 ADDR_Y [10:0] y,
    [11] p: one event at the current x; 4 VECT_BASE_Y [10:0] y base, [11] p; 5 VECT_8 [7:0] mask: events at
    y base + bit, then base += 8. Time is per packet: ``time_base + (high << 12 | low) * 1000`` ns, both
    fields reset to 0 at each packet's start.
    """
    words = np.frombuffer(payload.tobytes(), "<u2", count=payload.shape[0] // 2).astype(np.int64)
    if words.shape[0] == 0:
        return _Packet(_EMPTY, _EMPTY, _EMPTY, _EMPTY), state
    code, value = words >> 12, words & 0xFFF  # [n], [n]
    high = forward_fill(code == 0, value[code == 0], 0)
    low = forward_fill(code == 1, value[code == 1], 0)
    x_now = forward_fill(code == 2, value[code == 2] & 0x7FF, state.x)
    t_us = (np.int64(time_base_ns) + ((high << 12) | low) * 1000) // 1000  # [n] time in force at each word
    step = np.where(code == 5, 8, 0)
    advanced = np.cumsum(step) - step
    is_base = code == 4
    anchor = forward_fill(is_base, (value[is_base] & 0x7FF) - advanced[is_base], state.base_y)
    vector_p = forward_fill(is_base, (value[is_base] >> 11) & 1, state.vector_p)
    singles = np.flatnonzero(code == 3)
    vec_words = np.flatnonzero(code == 5)
    rows, bits = np.nonzero((value[vec_words, None] >> np.arange(8)) & 1)
    vec_word = vec_words[rows]
    word = np.concatenate([singles, vec_word])
    y = np.concatenate([value[singles] & 0x7FF, anchor[vec_word] + advanced[vec_word] + bits])
    p = np.concatenate([(value[singles] >> 11) & 1, vector_p[vec_word]])
    order = np.argsort(word, kind="stable")  # back into stream order
    word = word[order]
    packet = _Packet(x_now[word], y[order], t_us[word], p[order])
    return packet, _CmpState(int(x_now[-1]), int(anchor[-1] + advanced[-1] + step[-1]), int(vector_p[-1]))


class _Evt3Stream:
    """Consecutive EVT3 packets of one topic decoded as one stream, entered at any packet.

    Until the stream is synchronised (a TIME_HIGH, then a TIME_LOW and an ADDR_Y, and a VECT_BASE_X
    before any vector word) words are buffered and produce no events, as event_camera_codecs does.
    """

    def __init__(self, expected_us: int | None) -> None:
        self.state: Evt3State | None = None
        self.pending = np.zeros(0, np.uint16)
        self.expected_us = expected_us  # sensor time expected at the entry packet (wrap count), None = 0 wraps

    def feed(self, words: np.ndarray) -> Decoded:
        if self.state is not None:
            decoded, self.state = decode_evt3(words, self.state)
            return decoded
        self.pending = np.concatenate([self.pending, words])
        kinds = self.pending >> 12
        highs = np.flatnonzero(kinds == 0x8)
        if highs.shape[0] == 0:
            self.pending = self.pending[:0]
            return Decoded(_EMPTY, _EMPTY, _EMPTY, _EMPTY)
        h = int(highs[0])
        rest = kinds[h:]
        firsts = [np.flatnonzero(rest == code) for code in (0x6, 0x0)]
        if any(f.shape[0] == 0 for f in firsts):
            # A stream of time words only (an idle sensor) must not pile up: past a bound, wait from the
            # latest TIME_HIGH instead (no event has been decodable since the first one anyway).
            self.pending = self.pending[h:] if self.pending.shape[0] - h < _MAX_PENDING_WORDS else \
                self.pending[int(highs[-1]):]
            return Decoded(_EMPTY, _EMPTY, _EMPTY, _EMPTY)
        sync = max(int(f[0]) for f in firsts) + 1
        vectors, bases = np.flatnonzero((rest == 0x4) | (rest == 0x5)), np.flatnonzero(rest == 0x3)
        if vectors.shape[0] and (bases.shape[0] == 0 or vectors[0] < bases[0]):
            if bases.shape[0] == 0:
                self.pending = self.pending[h:]
                return Decoded(_EMPTY, _EMPTY, _EMPTY, _EMPTY)
            sync = max(sync, int(bases[0]))
        stream = self.pending[h:]
        high_raw = int(stream[0]) & 0xFFF
        loops = 0
        if self.expected_us is not None:
            loops = max(0, round((self.expected_us - (high_raw << 12)) / (1 << 24)))
        _, state = decode_evt3(stream[:sync], Evt3State(high_raw=high_raw, loops=loops))
        decoded, self.state = decode_evt3(stream[sync:], state)
        self.pending = self.pending[:0]
        return decoded


class _Decoder:
    """Turns one topic's messages into event packets; keeps the per-stream state (EVT3) between them."""

    def __init__(self, path: Path, msgtype: str, expected_us_at=None) -> None:
        self.path, self.msgtype = path, msgtype
        self.evt3: _Evt3Stream | None = None
        self.cmp = _CmpState()
        self.expected_us_at = expected_us_at  # header stamp (µs) -> expected sensor time (µs), or None

    def __call__(self, msg) -> _Packet:
        if self.msgtype in ARRAY_TYPES:
            events = msg.events
            if not events:
                return _Packet(_EMPTY, _EMPTY, _EMPTY, _EMPTY)
            table = np.array([(e.x, e.y, e.ts.sec, e.ts.nanosec, e.polarity) for e in events], np.int64)  # [n, 5]
            return _Packet(table[:, 0], table[:, 1], table[:, 2] * 1_000_000 + table[:, 3] // 1000, table[:, 4])
        encoding = str(msg.encoding).lower()
        if msg.is_bigendian:
            raise InputError(f"{str(self.path)!r}: big-endian {encoding} event packets are not supported")
        payload = np.asarray(msg.events, np.uint8)
        if encoding == "evt3":
            if self.evt3 is None:
                stamp_us = stamp_ns(msg.header.stamp) // 1000
                self.evt3 = _Evt3Stream(None if self.expected_us_at is None else self.expected_us_at(stamp_us))
            words = np.frombuffer(payload.tobytes(), "<u2", count=payload.shape[0] // 2)
            return _Packet(*self.evt3.feed(words))
        if encoding == "mono":
            return _decode_mono(payload, int(msg.time_base))
        if encoding == "libcaer":
            return _decode_libcaer(payload, int(msg.time_base))
        if encoding == "libcaer_cmp":
            packet, self.cmp = _decode_libcaer_cmp(payload, int(msg.time_base), self.cmp)
            return packet
        why = _UNSUPPORTED.get(encoding, "an unknown encoding")
        raise InputError(
            f"{str(self.path)!r}: event packets with encoding {encoding!r} are not supported ({why}); "
            f"supported encodings: {', '.join(ENCODINGS)}"
        )


# ------------------------------------------------------------------------------------ clock
class _Clock(NamedTuple):
    """How the topic's times relate: sensor -> ROS offset (µs) and record-time -> header-clock offset (ns)."""

    sensor_to_ros_us: int
    record_minus_stamp_ns: int
    first_record_ns: int
    sensor_size: tuple[int, int] | None
    first_event_us: int | None = None  # on the ROS clock


def _size(msg) -> tuple[int, int] | None:
    width, height = int(msg.width), int(msg.height)
    return (width, height) if width > 0 and height > 0 else None


def _clock(reader, path: Path, topic) -> _Clock:
    """The topic's clock from its first messages (decoded until the first event appears)."""
    decoder = _Decoder(path, topic.msgtype)
    first_record = None
    for record_ns, msg in messages(reader, topic):
        if first_record is None:
            first_record = (record_ns, stamp_ns(msg.header.stamp), _size(msg))
        packet = decoder(msg)
        if packet.t_us.shape[0]:
            if topic.msgtype in ARRAY_TYPES:
                offset_us = 0  # already on the ROS clock
            else:
                offset_us = stamp_ns(msg.header.stamp) // 1000 - int(packet.t_us[0])
            return _Clock(offset_us, first_record[0] - first_record[1], first_record[0], first_record[2],
                          int(packet.t_us[0]) + offset_us)
    size = first_record[2] if first_record else None
    return _Clock(0, 0, first_record[0] if first_record else 0, size)


def _packets(reader, path: Path, topic, clock: _Clock, start_ns: int | None) -> Iterator[_Packet]:
    """Packets on the ROS clock (µs), from record time ``start_ns`` on (None: the topic's start)."""
    if topic.msgtype in ARRAY_TYPES or start_ns is None:
        expected = None
    else:
        def expected(stamp_us: int) -> int:
            return stamp_us - clock.sensor_to_ros_us

    decoder = _Decoder(path, topic.msgtype, expected)
    for _, msg in messages(reader, topic, start_ns):
        packet = decoder(msg)
        if packet.t_us.shape[0]:
            yield packet._replace(t_us=packet.t_us + clock.sensor_to_ros_us)


def _read_window(reader, path: Path, topic, clock: _Clock, start_us, end_us, sort: bool) -> list[_Packet]:
    margin_ns = _MARGIN_NS
    while True:
        start_ns = None
        if start_us is not None and not sort:
            start_ns = start_us * 1000 + clock.record_minus_stamp_ns - margin_ns
            if start_ns <= clock.first_record_ns:
                start_ns = None
        parts: list[_Packet] = []
        for packet in _packets(reader, path, topic, clock, start_ns):
            if not parts and start_ns is not None and packet.t_us[0] >= start_us:
                break  # entered after the window's start: go back further
            parts.append(packet)
            if not sort and end_us is not None and packet.t_us[0] >= end_us:
                break
        else:
            return parts
        if parts:
            return parts
        margin_ns *= 2


def _read(path: Path, start_us, end_us, *, kind, sort, sensor_size, options) -> Events:
    with open_bag(path) as reader:
        topic = choose_topic(reader, path, EVENT_TYPES, options.topic, "event", "--events-topic")
        clock = _clock(reader, path, topic)
        parts = _read_window(reader, path, topic, clock, start_us, end_us, sort)
    x, y, t_us, p = (np.concatenate([part[i] for part in parts]) if parts else _EMPTY for i in range(4))
    source = f"{path}:{topic.name}"
    return assemble(source, x, y, t_us, p, sensor_size or clock.sensor_size, start_us=start_us, end_us=end_us, sort=sort)


def _last_event_us(reader, path: Path, topic, clock: _Clock) -> int | None:
    """The topic's last event time, decoding only its last messages (record time from the bag's end - a margin)."""
    margin_ns = _MARGIN_NS
    while True:
        start_ns = reader.end_time - margin_ns
        if start_ns <= clock.first_record_ns:
            start_ns = None
        last = None
        for packet in _packets(reader, path, topic, clock, start_ns):
            last = int(packet.t_us[-1]) if last is None else max(last, int(packet.t_us[-1]))
        if last is not None or start_ns is None:
            return last
        margin_ns *= 4


def _info(path: Path, *, kind, options) -> EventFileInfo:
    """First and last event times from the first and the last messages of the event topic (the count is None:
    it would need the whole topic decoded)."""
    with open_bag(path) as reader:
        topic = choose_topic(reader, path, EVENT_TYPES, options.topic, "event", "--events-topic")
        clock = _clock(reader, path, topic)
        last = _last_event_us(reader, path, topic, clock) if clock.first_event_us is not None else None
    return EventFileInfo(path, "ros", clock.sensor_size, clock.first_event_us, None if last is None else last + 1, None)


def _sniff(path: Path, head: bytes) -> str | None:
    return "ros" if head.startswith((b"#ROSBAG V2.0", b"\x89MCAP0\r\n")) else None


FORMAT = EventFormat(
    names=("ros",), read=_read, info=_info, suffixes=BAG_SUFFIXES, aliases={"bag": "ros", "rosbag": "ros"},
    sniff=_sniff, accepts_dir=is_bag,
)
