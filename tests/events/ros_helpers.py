"""Test-side ROS bag writers (rosbags' own Writer classes) and a scalar EVT3 reference decoder.

The message definitions here are typed in from the published .msg files, independently of
``evcascade.bags``; the EVT3 reference decoder is a plain per-word loop written from Prophesee's
specification, independent of the vectorised decoder under test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

PACKET = ("std_msgs/Header header\nuint32 height\nuint32 width\nuint64 seq\nuint64 time_base\n"
          "string encoding\nbool is_bigendian\nuint8[] events\n")
EVENT = "uint16 x\nuint16 y\ntime ts\nbool polarity\n"
ARRAY = "Header header\nuint32 height\nuint32 width\n{pkg}/Event[] events\n"
DEFINITIONS = {
    "event_camera_msgs/msg/EventPacket": PACKET,
    "event_array_msgs/msg/EventArray": PACKET,
    "dvs_msgs/msg/Event": EVENT,
    "dvs_msgs/msg/EventArray": ARRAY.format(pkg="dvs_msgs"),
    "prophesee_event_msgs/msg/Event": EVENT,
    "prophesee_event_msgs/msg/EventArray": ARRAY.format(pkg="prophesee_event_msgs"),
}


def store(ros1: bool):
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    typestore = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    types = {}
    for name, text in DEFINITIONS.items():
        types.update(get_types_from_msg(text, name))
    typestore.register(types)
    return typestore


class BagWriter:
    """Writes messages given as (topic, msgtype, record_ns, fields) into a ROS 1 bag or a ROS 2 bag folder."""

    def __init__(self, path: Path, kind: str) -> None:
        from rosbags.rosbag1 import Writer as Writer1
        from rosbags.rosbag2 import StoragePlugin, Writer as Writer2

        self.ros1 = kind == "ros1"
        self.types = store(self.ros1)
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if self.ros1:
            self.writer = Writer1(path)
        else:
            plugin = StoragePlugin.MCAP if kind == "mcap" else StoragePlugin.SQLITE3
            self.writer = Writer2(path, version=9, storage_plugin=plugin)
        self.connections: dict[str, object] = {}
        self.path = path

    def __enter__(self) -> "BagWriter":
        self.writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self.writer.close()

    def header(self, stamp_ns: int, frame_id: str = "cam"):
        Header, Time = self.types.types["std_msgs/msg/Header"], self.types.types["builtin_interfaces/msg/Time"]
        stamp = Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
        return Header(seq=0, stamp=stamp, frame_id=frame_id) if self.ros1 else Header(stamp=stamp, frame_id=frame_id)

    def time(self, t_ns: int):
        return self.types.types["builtin_interfaces/msg/Time"](sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)

    def write(self, topic: str, msgtype: str, record_ns: int, msg) -> None:
        if topic not in self.connections:
            self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=self.types)
        connection = self.connections[topic]
        data = self.types.serialize_ros1(msg, msgtype) if self.ros1 else self.types.serialize_cdr(msg, msgtype)
        self.writer.write(connection, record_ns, data)

    # ---- message builders
    def packet(self, msgtype: str, stamp_ns: int, payload: bytes, encoding: str, size=(64, 48), time_base: int = 0):
        cls = self.types.types[msgtype]
        return cls(header=self.header(stamp_ns), height=size[1], width=size[0], seq=0, time_base=time_base,
                   encoding=encoding, is_bigendian=False, events=np.frombuffer(payload, np.uint8).copy())

    def event_array(self, msgtype: str, stamp_ns: int, x, y, t_ns, p, size=(64, 48)):
        Event = self.types.types[msgtype.replace("EventArray", "Event")]
        events = [Event(x=int(a), y=int(b), ts=self.time(int(c)), polarity=bool(d)) for a, b, c, d in zip(x, y, t_ns, p)]
        return self.types.types[msgtype](header=self.header(stamp_ns), height=size[1], width=size[0], events=events)

    def image(self, stamp_ns: int, rgb: np.ndarray, encoding: str = "rgb8"):
        Image = self.types.types["sensor_msgs/msg/Image"]
        if encoding == "bgr8":
            data = rgb[..., ::-1]
        elif encoding == "mono8":
            data = rgb[..., :1]
        else:
            data = rgb
        data = np.ascontiguousarray(data)
        height, width = data.shape[:2]
        return Image(header=self.header(stamp_ns), height=height, width=width, encoding=encoding, is_bigendian=0,
                     step=width * data.shape[2], data=data.reshape(-1).copy())

    def compressed(self, stamp_ns: int, rgb: np.ndarray, fmt: str = "png"):
        import cv2

        ok, encoded = cv2.imencode(f".{fmt}", rgb[..., ::-1])
        assert ok
        cls = self.types.types["sensor_msgs/msg/CompressedImage"]
        return cls(header=self.header(stamp_ns), format=fmt, data=encoded.reshape(-1).copy())


def reference_decode_evt3(words: np.ndarray):
    """EVT 3.0 words -> (x, y, t_us, p, word index) lists, one word at a time (TIME_HIGH drop = 24-bit wrap)."""
    xs, ys, ts, ps, at = [], [], [], [], []
    y = low = high = wraps = 0
    last_high = None
    base, pol = 0, 0
    for i, word in enumerate(int(w) for w in words):
        code, value = word >> 12, word & 0xFFF
        if code == 0x0:
            y = value & 0x7FF
        elif code == 0x6:
            low = value
        elif code == 0x8:
            if last_high is not None and value < last_high:
                wraps += 1
            high, last_high = value, value
        elif code == 0x2:
            xs.append(value & 0x7FF), ys.append(y), ts.append((wraps << 24) | (high << 12) | low)
            ps.append(value >> 11), at.append(i)
        elif code == 0x3:
            base, pol = value & 0x7FF, value >> 11
        elif code in (0x4, 0x5):
            bits = 12 if code == 0x4 else 8
            for b in range(bits):
                if value >> b & 1:
                    xs.append(base + b), ys.append(y), ts.append((wraps << 24) | (high << 12) | low)
                    ps.append(pol), at.append(i)
            base += bits
    return tuple(np.asarray(v, np.int64) for v in (xs, ys, ts, ps, at))


def encode_libcaer_cmp(x, y, t_rel_us, p, use_vectors: bool = True) -> np.ndarray:
    """One packet of compressed libcaer words (event_camera_codecs' layout): times relative to the packet's
    time_base (< 2**24 us). Runs of equal (t, x, p) with nearby y become VECT_BASE_Y + VECT_8 words.
    Returns the words and the event order they encode (indices into the inputs)."""
    words: list[int] = []
    high = low = x_now = None
    order = np.lexsort((y, p, x, t_rel_us))
    emitted = []
    i, n = 0, len(order)
    while i < n:
        k = order[i]
        ti, xi, pi = int(t_rel_us[k]), int(x[k]), int(p[k])
        if ti >> 12 != high:
            high = ti >> 12
            words.append((0 << 12) | high)
        if ti & 0xFFF != low:
            low = ti & 0xFFF
            words.append((1 << 12) | low)
        if xi != x_now:
            x_now = xi
            words.append((2 << 12) | xi)
        j = i
        while j < n and (int(t_rel_us[order[j]]), int(x[order[j]]), int(p[order[j]])) == (ti, xi, pi):
            j += 1
        run = order[i:j]  # y ascending
        if use_vectors and len(run) > 1:
            remaining = [int(y[r]) for r in run]
            while remaining:
                base = remaining[0]
                words.append((4 << 12) | (pi << 11) | base)
                while remaining and remaining[0] - base < 8 * 3:  # up to three VECT_8 words per base
                    mask = sum(1 << (v - base) for v in remaining if 0 <= v - base < 8)
                    words.append((5 << 12) | mask)
                    remaining = [v for v in remaining if v - base >= 8]
                    base += 8
        else:
            words.extend((3 << 12) | (pi << 11) | int(y[r]) for r in run)
        emitted.extend(run.tolist())
        i = j
    return np.array(words, dtype="<u2"), np.asarray(emitted)
