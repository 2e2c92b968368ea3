"""Image topics of ROS bags as video: frame times from the messages' header stamps, only sampled frames decoded.

Read types: ``sensor_msgs/Image`` (encodings ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``, ``mono8`` and the
8-bit Bayer patterns ``bayer_rggb8`` / ``bayer_bggr8`` / ``bayer_gbrg8`` / ``bayer_grbg8``, demosaiced by
OpenCV) and ``sensor_msgs/CompressedImage`` (JPEG / PNG, decoded by OpenCV). Other encodings are an
``InputError`` naming the encoding. ``evcascade.video.read_video`` dispatches bags here; the frames'
times are the header stamps in microseconds (``sec * 1e6 + nanosec // 1000``), the bag's clock, so no
alignment applies.

Opening a topic reads every message's header stamp straight from the serialised bytes (the stamp
is the first field after the 4-byte CDR encapsulation / ROS 1 ``seq``), without deserialising the
images; reading frames deserialises only the messages between the first and the last sampled one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from evcascade.bags import choose_topic, messages, open_bag
from evcascade.errors import InputError

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
# ROS Bayer names give the top-left 2x2 block; OpenCV names its codes by the second row (RGGB = BayerBG).
_BAYER = {"bayer_rggb8": "COLOR_BayerBG2RGB", "bayer_bggr8": "COLOR_BayerRG2RGB",
          "bayer_gbrg8": "COLOR_BayerGR2RGB", "bayer_grbg8": "COLOR_BayerGB2RGB"}
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, **{name: 1 for name in _BAYER}}


@dataclass(frozen=True)
class BagImages:
    """An image topic opened for sampling: header-stamp times (ascending), frame size, and a frame reader."""

    path: str
    timestamps_us: np.ndarray  # [N] int64, ascending
    width: int
    height: int
    reader: Callable[[np.ndarray], np.ndarray]  # sorted unique indices [n] -> uint8 [n, H, W, 3]


def _stamp_from_raw(raw: bytes, ros1: bool) -> int:
    """Header stamp (ns) of a serialised message whose first field is ``std_msgs/Header``."""
    if ros1:  # uint32 seq, uint32 sec, uint32 nsec (little-endian)
        sec, nsec = np.frombuffer(raw, "<u4", count=2, offset=4)
    else:  # CDR: 4-byte encapsulation (byte 1: 0 big / 1 little endian), int32 sec, uint32 nanosec
        order = "<" if raw[1] & 1 else ">"
        sec, nsec = int(np.frombuffer(raw, f"{order}i4", count=1, offset=4)[0]), np.frombuffer(raw, f"{order}u4", count=1, offset=8)[0]
    return int(sec) * 1_000_000_000 + int(nsec)


def decode_image(msg, msgtype: str, source: str) -> np.ndarray:
    """One ``sensor_msgs/Image`` or ``CompressedImage`` message as uint8 RGB [H, W, 3]."""
    import cv2

    if msgtype.endswith("CompressedImage"):
        data = np.asarray(msg.data, np.uint8)
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.shape[0] else None
        if bgr is None:
            raise InputError(f"{source}: cannot decode a CompressedImage (format {msg.format!r}); JPEG and PNG are read")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    encoding = str(msg.encoding).lower()
    if encoding not in _CHANNELS:
        raise InputError(
            f"{source}: image encoding {msg.encoding!r} is not supported; supported: {', '.join(_CHANNELS)}"
        )
    channels = _CHANNELS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, np.uint8)
    if step < width * channels or data.shape[0] < step * height:
        raise InputError(f"{source}: image of {width}x{height} {encoding} has step {step} and {data.shape[0]} bytes")
    image = data[: step * height].reshape(height, step)[:, : width * channels].reshape(height, width, channels)
    if encoding in _BAYER:
        return cv2.cvtColor(np.ascontiguousarray(image[..., 0]), getattr(cv2, _BAYER[encoding]))
    if encoding == "mono8":
        return np.repeat(image, 3, axis=2)
    rgb = image[..., :3]
    return np.ascontiguousarray(rgb[..., ::-1] if encoding.startswith("bgr") else rgb)


def _fingerprint(path: Path) -> tuple:
    """(name, size, mtime) of the bag's file(s): a changed bag is scanned again."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())


@lru_cache(maxsize=8)
def _scan(path: Path, topic: str | None, fingerprint: tuple) -> tuple[str, str, np.ndarray, np.ndarray, int, int]:
    """Topic name and type, record times and header stamps (ns, record order) and frame size of an image topic.

    Cached per bag version: ``video_info`` and ``read_video`` of one clip share one pass.
    """
    with open_bag(path) as reader:
        chosen = choose_topic(reader, path, IMAGE_TYPES, topic, "image", "--video-topic")
        ros1 = not reader.is2
        records, stamps = [], []
        for _, record_ns, raw in reader.messages(connections=chosen.connections):
            records.append(record_ns)
            stamps.append(_stamp_from_raw(raw, ros1))
        if not records:
            raise InputError(f"{str(path)!r}: image topic {chosen.name!r} has no messages")
        first = next(messages(reader, chosen))[1]
        height, width = decode_image(first, chosen.msgtype, f"{path}:{chosen.name}").shape[:2]
    return chosen.name, chosen.msgtype, np.asarray(records, np.int64), np.asarray(stamps, np.int64), width, height


def open_bag_images(path, topic: str | None = None) -> BagImages:
    """The image topic of bag ``path`` (``topic``, else its only image topic) opened for sampling.

    Opening reads every message of the topic once (header stamps from the bytes, no image decoded);
    reading frames deserialises and decodes only the sampled messages.
    """
    path = Path(path).expanduser()
    name, msgtype, records_ns, stamps_ns, width, height = _scan(path, topic, _fingerprint(path))
    order = np.argsort(stamps_ns, kind="stable")  # [N] frame i = message order[i] (record order)
    timestamps_us = stamps_ns[order] // 1000
    source = f"{path}:{name}"

    def read(indices: np.ndarray) -> np.ndarray:
        positions = order[indices]  # message positions in record order
        wanted = {int(pos): k for k, pos in enumerate(positions)}
        frames: list[np.ndarray | None] = [None] * len(positions)
        lo = int(positions.min())
        first_pos = int(np.searchsorted(records_ns, records_ns[lo], side="left"))
        from rosbags.highlevel import AnyReaderError

        with open_bag(path) as reader:
            chosen = choose_topic(reader, path, IMAGE_TYPES, name, "image", "--video-topic")
            raw_messages = reader.messages(connections=chosen.connections, start=int(records_ns[lo]))
            for pos, (connection, _, raw) in enumerate(raw_messages, start=first_pos):
                if pos not in wanted:
                    continue  # not sampled: never deserialised
                try:
                    msg = reader.deserialize(raw, connection.msgtype)
                except AnyReaderError as err:
                    raise InputError(f"{source}: cannot decode image message {pos}: {err}") from None
                frame = decode_image(msg, msgtype, source)
                if frame.shape[:2] != (height, width):
                    raise InputError(f"{source}: frame {pos} is {frame.shape[1]}x{frame.shape[0]}, "
                                     f"the first is {width}x{height}")
                frames[wanted.pop(pos)] = frame
                if not wanted:
                    break
        return np.stack(frames)

    return BagImages(source, timestamps_us, int(width), int(height), read)
