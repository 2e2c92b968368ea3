"""ROS 1 and ROS 2 bags through ``rosbags`` (pure Python, no ROS install): what the event and image readers share.

``rosbags`` is an optional extra (``pip install 'evcascade[ros]'``); without it, opening a bag is an
``InputError`` that names the extra. Accepted paths::

    run.bag                 ROS 1 bag
    run_ros2/               ROS 2 bag folder (metadata.yaml + .db3 or .mcap files)
    run_0.db3, run_0.mcap   one ROS 2 storage file

The event-camera message types are not in rosbags' built-in type stores, so they are registered here
from their published ``.msg`` definitions (``EVENT_MSG_DEFINITIONS``). A ROS 1 bag, and a ROS 2 bag
recorded with message definitions, carries its own definitions, which rosbags uses first; these are
the fallback for ROS 2 bags without them.

Time: ``messages`` walks the bag's own time index (receive/record time, nanoseconds), so a window read
touches only the messages of its time range; readers map their window onto that index with a margin
and cut exactly on the message contents (header stamps, event times).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from evcascade.errors import InputError

BAG_SUFFIXES = (".bag", ".db3", ".mcap")
ROS_EXTRA = "pip install 'evcascade[ros]'"

# Published definitions: ros-event-camera/event_camera_msgs (msg_ros2/EventPacket.msg), its predecessor
# event_array_msgs (EventArray.msg, the same fields), uzh-rpg/rpg_dvs_ros dvs_msgs and
# prophesee-ai/prophesee_ros_wrapper prophesee_event_msgs (Event / EventArray, the dvs_msgs layout).
_PACKET_MSG = """std_msgs/Header header
uint32 height
uint32 width
uint64 seq
uint64 time_base
string encoding
bool is_bigendian
uint8[] events
"""
_EVENT_MSG = "uint16 x\nuint16 y\ntime ts\nbool polarity\n"
_ARRAY_MSG = "std_msgs/Header header\nuint32 height\nuint32 width\n{package}/Event[] events\n"
EVENT_MSG_DEFINITIONS = {
    "event_camera_msgs/msg/EventPacket": _PACKET_MSG,
    "event_array_msgs/msg/EventArray": _PACKET_MSG,
    "dvs_msgs/msg/Event": _EVENT_MSG,
    "dvs_msgs/msg/EventArray": _ARRAY_MSG.format(package="dvs_msgs"),
    "prophesee_event_msgs/msg/Event": _EVENT_MSG,
    "prophesee_event_msgs/msg/EventArray": _ARRAY_MSG.format(package="prophesee_event_msgs"),
}


def is_bag(path) -> bool:
    """True for a ``.bag`` / ``.db3`` / ``.mcap`` file or a folder holding a ROS 2 ``metadata.yaml``."""
    resolved = Path(path).expanduser()
    if resolved.is_dir():
        return (resolved / "metadata.yaml").is_file()
    return resolved.suffix.lower() in BAG_SUFFIXES


def require_rosbags() -> None:
    """Raise an ``InputError`` naming the ``[ros]`` extra when ``rosbags`` cannot be imported."""
    try:
        import rosbags.highlevel  # noqa: F401
    except ImportError:
        raise InputError(f"reading ROS bags needs the optional 'rosbags' package: {ROS_EXTRA}") from None


@lru_cache(maxsize=2)
def typestore(ros1: bool = False):
    """A rosbags type store (ROS 1 Noetic or ROS 2 Humble) with the event-camera messages registered."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    types = {}
    for name, text in EVENT_MSG_DEFINITIONS.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


@contextmanager
def open_bag(path: Path) -> Iterator["AnyReader"]:  # noqa: F821
    """An open ``rosbags.highlevel.AnyReader`` on ``path``; unreadable bags become an InputError naming it."""
    require_rosbags()
    from rosbags.highlevel import AnyReader, AnyReaderError

    try:
        reader = AnyReader([Path(path)], default_typestore=typestore())
        reader.open()
    except (AnyReaderError, OSError, ValueError, KeyError) as err:
        raise InputError(f"{str(path)!r} is not a readable ROS bag: {err}") from None
    try:
        yield reader
    finally:
        reader.close()


@dataclass(frozen=True)
class Topic:
    """One topic of an open bag: its name, message type, connections and message count."""

    name: str
    msgtype: str
    connections: tuple
    count: int


def _describe(topics: dict) -> str:
    return ", ".join(f"{name} ({info.msgtype})" for name, info in sorted(topics.items())) or "none"


def choose_topic(reader, path, msgtypes: tuple[str, ...], topic: str | None, what: str, flag: str) -> Topic:
    """The topic to read: ``topic`` when given (checked), else the bag's only topic of ``msgtypes``.

    ``what`` names the stream in errors ("event", "image"); ``flag`` is the CLI option that chooses it.
    """
    topics = reader.topics
    if topic is not None:
        if topic not in topics:
            raise InputError(f"{str(path)!r} has no topic {topic!r}; topics present: {_describe(topics)}")
        info = topics[topic]
        if info.msgtype not in msgtypes:
            raise InputError(
                f"{str(path)!r}: topic {topic!r} is {info.msgtype}, not an {what} topic "
                f"(readable {what} types: {', '.join(msgtypes)})"
            )
        return Topic(topic, info.msgtype, tuple(info.connections), int(info.msgcount))
    candidates = {name: info for name, info in topics.items() if info.msgtype in msgtypes}
    if not candidates:
        raise InputError(
            f"{str(path)!r} has no {what} topic (readable types: {', '.join(msgtypes)}); "
            f"topics present: {_describe(topics)}"
        )
    if len(candidates) > 1:
        raise InputError(
            f"{str(path)!r} has several {what} topics: {_describe(candidates)}; choose one with topic=... "
            f"(CLI: {flag} NAME)"
        )
    (name, info), = candidates.items()
    return Topic(name, info.msgtype, tuple(info.connections), int(info.msgcount))


def stamp_ns(stamp) -> int:
    """A ROS time (``builtin_interfaces/Time``: sec, nanosec) in integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def messages(reader, topic: Topic, start_ns: int | None = None) -> Iterator[tuple[int, object]]:
    """(record time ns, deserialised message) of ``topic`` from ``start_ns`` on, through the bag's time index."""
    from rosbags.highlevel import AnyReaderError

    for connection, record_ns, raw in reader.messages(connections=topic.connections, start=start_ns):
        try:
            yield record_ns, reader.deserialize(raw, connection.msgtype)
        except AnyReaderError as err:
            raise InputError(f"cannot decode a {connection.msgtype} message on {topic.name!r}: {err}") from None
