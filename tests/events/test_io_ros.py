"""ROS 1 / ROS 2 bags: events in each message layout, image topics as video, topic choice, the main command.

Bags are written by rosbags' own writers. EventPacket payloads are EVT 3.0 words from the test-side
encoder (io_helpers.encode_evt3), cut into packets at arbitrary word offsets (not at event
boundaries), with the 24-bit sensor clock wrapping inside the recording; every event read is checked
against the test-side scalar reference decoder of the same words (ros_helpers.reference_decode_evt3).
"""

from __future__ import annotations

import functools
import json
import sys

import numpy as np
import pytest
from io_helpers import encode_evt3, random_events
from ros_helpers import BagWriter, encode_libcaer_cmp, reference_decode_evt3

pytest.importorskip("rosbags", reason="the [ros] extra (rosbags) writes and reads the test bags")

from evcascade.errors import InputError
from evcascade.events.io import detect_format, event_file_info, read_events
from evcascade.video import read_video, video_info

SIZE = (64, 64)
OFFSET_US = 1_700_000_000_000_000  # ROS clock = sensor clock + this
SENSOR_T0_US = (1 << 24) - 1_000_000  # the 24-bit EVT3 clock wraps 1 s into the recording
LATENCY_NS = 3_000_000  # record time = header stamp + 3 ms
WORDS_PER_PACKET = 397  # packets cut mid-stream, not at event boundaries


def _unique_events(n, seed=0):
    x, y, t, p = random_events(n, SIZE, t0_us=SENSOR_T0_US, duration_us=3_000_000, seed=seed)
    table = np.unique(np.stack([t, y, p, x], 1), axis=0)  # the encoder merges exact duplicates
    return table[:, 3], table[:, 1], table[:, 0], table[:, 2]


@pytest.fixture(scope="module")
def scene():
    """EVT3 words of a 3 s recording, their packets (word ranges + header stamps) and the reference decoding."""
    x, y, t, p = _unique_events(4000)
    words = encode_evt3(x, y, t, p)
    ref_x, ref_y, ref_t, ref_p, ref_word = reference_decode_evt3(words)
    order = np.lexsort((x, p, y, t))  # the encoder's stream order
    np.testing.assert_array_equal(ref_t, t[order])  # the reference decoder agrees with the encoded truth
    np.testing.assert_array_equal(ref_x, x[order])
    packets = []
    for lo in range(0, len(words), WORDS_PER_PACKET):
        inside = np.flatnonzero(ref_word >= lo)
        first_t = ref_t[inside[0]] if inside.shape[0] else ref_t[-1]
        packets.append((lo, min(lo + WORDS_PER_PACKET, len(words)), int(first_t + OFFSET_US) * 1000))
    frames = np.random.default_rng(1).integers(0, 256, (16, SIZE[1], SIZE[0], 3), dtype=np.uint8)
    frame_stamps_ns = [(OFFSET_US + SENSOR_T0_US + 100_000 + 200_000 * i) * 1000 for i in range(16)]
    reference = (ref_x, ref_y, ref_t + OFFSET_US, ref_p)
    return {"words": words, "packets": packets, "reference": reference, "frames": frames, "stamps": frame_stamps_ns}


def write_scene_bag(path, kind, scene, msgtype="event_camera_msgs/msg/EventPacket"):
    with BagWriter(path, kind) as bag:
        items = []
        for lo, hi, stamp in scene["packets"]:
            msg = bag.packet(msgtype, stamp, scene["words"][lo:hi].tobytes(), "evt3", SIZE)
            items.append((stamp + LATENCY_NS, "/events", msgtype, msg))
        for frame, stamp in zip(scene["frames"], scene["stamps"]):
            items.append((stamp + LATENCY_NS, "/cam/image_raw", "sensor_msgs/msg/Image", bag.image(stamp, frame)))
        for record_ns, topic, msgtype_, msg in sorted(items, key=lambda item: item[0]):
            bag.write(topic, msgtype_, record_ns, msg)
    return path


@pytest.fixture(scope="module")
def bags(scene, tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    return {
        "ros1": write_scene_bag(root / "run.bag", "ros1", scene),
        "sqlite3": write_scene_bag(root / "run_sqlite", "sqlite3", scene),
        "mcap": write_scene_bag(root / "run_mcap", "mcap", scene),
    }


def assert_events(got, expected, start=None, end=None):
    x, y, t, p = expected
    keep = np.ones(t.shape[0], bool)
    if start is not None:
        keep &= t >= start
    if end is not None:
        keep &= t < end
    assert len(got) == int(keep.sum())
    np.testing.assert_array_equal(got.t_us, t[keep])
    np.testing.assert_array_equal(got.x, x[keep])
    np.testing.assert_array_equal(got.y, y[keep])
    np.testing.assert_array_equal(got.p, p[keep])


# ------------------------------------------------------------------------------------ EVT3 packets
@pytest.mark.parametrize("kind", ["ros1", "sqlite3", "mcap"])
def test_evt3_packets_equal_the_reference_decoder_whole_and_windowed(bags, scene, kind):
    path = bags[kind]
    reference = scene["reference"]
    assert detect_format(path) == "ros"
    whole = read_events(path)
    assert whole.sensor_size == SIZE
    assert_events(whole, reference)
    base = OFFSET_US + SENSOR_T0_US
    # after the 24-bit wrap (entered mid-stream: the wrap count comes from the header stamp), across it, tiny
    for start, end in ((base + 2_400_000, base + 2_650_000), (base + 700_000, base + 1_300_000),
                       (base + 1_000_000, base + 1_000_050)):
        assert_events(read_events(path, start, end), reference, start, end)
    info = event_file_info(path)  # from the first and the last packets only: no count
    assert (info.format, info.sensor_size, info.num_events) == ("ros", SIZE, None)
    assert (info.start_us, info.end_us) == (int(reference[2][0]), int(reference[2][-1]) + 1)


def test_ros2_storage_files_read_directly(bags, scene):
    for folder, suffix in ((bags["sqlite3"], ".db3"), (bags["mcap"], ".mcap")):
        (storage,) = folder.glob(f"*{suffix}")
        assert_events(read_events(storage), scene["reference"])


def test_window_reads_only_the_messages_near_the_window(bags, scene, monkeypatch):
    import evcascade.events.io.ros as ros

    counted = []
    original = ros.messages

    def counting(*args, **kwargs):
        for item in original(*args, **kwargs):
            counted.append(1)
            yield item

    monkeypatch.setattr(ros, "messages", counting)
    base = OFFSET_US + SENSOR_T0_US
    got = read_events(bags["ros1"], base + 2_400_000, base + 2_500_000)
    assert_events(got, scene["reference"], base + 2_400_000, base + 2_500_000)
    # the clock needs the first packet; the window needs ~1 s (margin) + 0.1 s of a 3 s recording
    assert len(counted) < 0.6 * len(scene["packets"])
    counted.clear()
    info = event_file_info(bags["ros1"])  # the first packets and the last ~1 s
    assert info.end_us == int(scene["reference"][2][-1]) + 1 and len(counted) < 0.5 * len(scene["packets"])


def test_event_array_msgs_evt3_layout(scene, tmp_path):
    path = write_scene_bag(tmp_path / "legacy.bag", "ros1", scene, msgtype="event_array_msgs/msg/EventArray")
    assert_events(read_events(path), scene["reference"])


# ------------------------------------------------------------------------------------ other layouts
def _split(n, parts):
    return np.array_split(np.arange(n), parts)


@pytest.fixture(scope="module")
def layouts_bag(tmp_path_factory):
    """One ROS 2 bag with a topic per layout (mono, libcaer, libcaer_cmp, dvs_msgs, prophesee_event_msgs, trigger)."""
    x, y, t, p = _unique_events(600, seed=3)
    ros_t = t + OFFSET_US
    path = tmp_path_factory.mktemp("layouts") / "layouts"
    with BagWriter(path, "sqlite3") as bag:
        for chunk in _split(t.shape[0], 6):
            cx, cy, ct, cp = x[chunk], y[chunk], t[chunk], p[chunk]
            stamp = int(ros_t[chunk[0]]) * 1000
            record = stamp + LATENCY_NS
            base_ns = int(ct[0]) * 1000 - 7_000
            mono = (cp.astype(np.uint64) << np.uint64(63)) | (cy.astype(np.uint64) << np.uint64(48)) \
                | (cx.astype(np.uint64) << np.uint64(32)) | (ct * 1000 - base_ns).astype(np.uint64)
            bag.write("/mono", "event_camera_msgs/msg/EventPacket", record,
                      bag.packet("event_camera_msgs/msg/EventPacket", stamp, mono.astype("<u8").tobytes(), "mono",
                                 SIZE, time_base=base_ns))
            caer = np.zeros(chunk.shape[0], [("data", "<u4"), ("t", "<i4")])
            caer["data"] = (cx << 17) | (cy << 2) | (cp << 1) | 1
            caer["t"] = ct - (int(ct[0]) - 5)
            bag.write("/libcaer", "event_camera_msgs/msg/EventPacket", record,
                      bag.packet("event_camera_msgs/msg/EventPacket", stamp, caer.tobytes(), "libcaer", SIZE,
                                 time_base=(int(ct[0]) - 5) * 1000))
            for topic, msgtype in (("/dvs", "dvs_msgs/msg/EventArray"),
                                   ("/prophesee", "prophesee_event_msgs/msg/EventArray")):
                bag.write(topic, msgtype, record, bag.event_array(msgtype, stamp, cx, cy, ros_t[chunk] * 1000, cp, SIZE))
            cmp_words, _ = encode_libcaer_cmp(cx, cy, ct - (int(ct[0]) - 5), cp)
            bag.write("/cmp", "event_camera_msgs/msg/EventPacket", record,
                      bag.packet("event_camera_msgs/msg/EventPacket", stamp, cmp_words.tobytes(), "libcaer_cmp",
                                 SIZE, time_base=(int(ct[0]) - 5) * 1000))
            bag.write("/trigger", "event_camera_msgs/msg/EventPacket", record,
                      bag.packet("event_camera_msgs/msg/EventPacket", stamp, b"\0" * 16, "trigger", SIZE))
    return path, (x, y, ros_t, p)


def _canonical(events_or_arrays):
    """Events ordered by (t, x, y, p): encoders may order events of equal time differently."""
    x, y, t, p = (np.asarray(a) for a in events_or_arrays)
    order = np.lexsort((p, y, x, t))
    return x[order], y[order], t[order], p[order]


@pytest.mark.parametrize("topic", ["/mono", "/libcaer", "/libcaer_cmp", "/dvs", "/prophesee"])
def test_each_message_layout_reads_every_event(layouts_bag, topic):
    path, expected = layouts_bag
    topic = "/cmp" if topic == "/libcaer_cmp" else topic
    if topic == "/cmp":  # its encoder orders equal-time events by x: compare in one canonical order
        expected = _canonical(expected)
        got = read_events(path, topic=topic)
        np.testing.assert_array_equal(np.stack(_canonical((got.x, got.y, got.t_us, got.p))), np.stack(expected))
        assert got.sensor_size == SIZE
        return
    got = read_events(path, topic=topic)
    assert got.sensor_size == SIZE
    assert_events(got, expected)
    start, end = int(expected[2][100]), int(expected[2][400])
    assert_events(read_events(path, start, end, topic=topic), expected, start, end)
    info = event_file_info(path, topic=topic)
    assert (info.start_us, info.end_us, info.sensor_size) == (int(expected[2][0]), int(expected[2][-1]) + 1, SIZE)


def test_topic_choice_errors_name_the_candidates(layouts_bag, bags, tmp_path):
    path, _ = layouts_bag
    with pytest.raises(InputError, match=r"several event topics: /cmp .*/dvs .*/libcaer .*/mono .*--events-topic"):
        read_events(path)
    with pytest.raises(InputError, match=r"no topic '/nope'; topics present: /cmp \(event_camera_msgs/msg/EventPacket\)"):
        read_events(path, topic="/nope")
    with pytest.raises(InputError, match=r"encoding 'trigger' are not supported \(external trigger events only.*"
                                         r"supported encodings: evt3, mono, libcaer, libcaer_cmp"):
        read_events(path, topic="/trigger")
    with pytest.raises(InputError, match=r"'/cam/image_raw' is sensor_msgs/msg/Image, not an event topic"):
        read_events(bags["ros1"], topic="/cam/image_raw")
    with pytest.raises(InputError, match=r"has no image topic .*topics present: /cmp"):
        read_video(path)
    with BagWriter(tmp_path / "imu.bag", "ros1") as bag:
        String = bag.types.types["std_msgs/msg/String"]
        bag.write("/note", "std_msgs/msg/String", 1, String(data="hi"))
    with pytest.raises(InputError, match=r"has no event topic .*topics present: /note \(std_msgs/msg/String\)"):
        read_events(tmp_path / "imu.bag")
    with pytest.raises(InputError, match="applies to ROS bags only"):
        read_events(_text_file(tmp_path), topic="/events")


def _text_file(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text("1 0 0 1\n")
    return path


def test_missing_rosbags_names_the_extra(bags, monkeypatch):
    monkeypatch.setitem(sys.modules, "rosbags.highlevel", None)  # `import rosbags.highlevel` now fails
    with pytest.raises(InputError, match=r"pip install 'evcascade\[ros\]'"):
        read_events(bags["ros1"])
    with pytest.raises(InputError, match=r"evcascade\[ros\]"):
        read_video(bags["ros1"])


# ------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("kind", ["ros1", "mcap"])
def test_image_topic_is_a_video_on_the_bag_clock(bags, scene, kind):
    stamps_us = np.asarray(scene["stamps"]) // 1000
    info = video_info(bags[kind])
    assert (info.num_frames, info.start_us, info.end_us, info.width, info.height) == (
        16, stamps_us[0], stamps_us[-1] + 1, SIZE[0], SIZE[1])
    video = read_video(bags[kind], num_frames=4, start_us=int(stamps_us[2]), end_us=int(stamps_us[12]))
    picked = 2 + np.linspace(0, 9, 4).astype(int)
    np.testing.assert_array_equal(video.timestamps_us, stamps_us[picked])
    np.testing.assert_array_equal(video.frames, scene["frames"][picked])


def test_image_encodings_compressed_and_bayer(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (4, 24, 32, 3), dtype=np.uint8)
    rows, cols = np.mgrid[0:24, 0:32]
    smooth = np.stack([rows * 8, cols * 6, 255 - rows * 4 - cols * 3], -1).astype(np.uint8)  # JPEG keeps it close
    flat = np.zeros((24, 32, 3), np.uint8)
    flat[:] = (200, 90, 30)
    rggb = np.zeros((24, 32), np.uint8)  # R G / G B
    rggb[0::2, 0::2], rggb[0::2, 1::2], rggb[1::2, 0::2], rggb[1::2, 1::2] = 200, 90, 90, 30
    path = tmp_path / "images.bag"
    with BagWriter(path, "ros1") as bag:
        for i in range(4):
            stamp = (10 + i) * 1_000_000_000
            for encoding in ("bgr8", "mono8"):
                bag.write(f"/{encoding}", "sensor_msgs/msg/Image", stamp, bag.image(stamp, rgb[i], encoding))
            bag.write("/png", "sensor_msgs/msg/CompressedImage", stamp, bag.compressed(stamp, rgb[i], "png"))
            bag.write("/jpeg", "sensor_msgs/msg/CompressedImage", stamp, bag.compressed(stamp, smooth, "jpg"))
            bayer = bag.image(stamp, np.repeat(rggb[..., None], 3, 2), "mono8")
            bayer.encoding = "bayer_rggb8"
            bag.write("/bayer", "sensor_msgs/msg/Image", stamp, bayer)
            depth = bag.image(stamp, rgb[i], "mono8")
            depth.encoding = "16UC1"
            bag.write("/depth", "sensor_msgs/msg/Image", stamp, depth)
    np.testing.assert_array_equal(read_video(path, 4, topic="/bgr8").frames, rgb)
    np.testing.assert_array_equal(read_video(path, 4, topic="/mono8").frames, np.repeat(rgb[..., :1], 3, 3))
    np.testing.assert_array_equal(read_video(path, 4, topic="/png").frames, rgb)
    jpeg = read_video(path, 4, topic="/jpeg").frames.astype(int)
    assert jpeg.shape == rgb.shape and np.abs(jpeg - smooth).mean() < 6  # lossy, but the same picture
    bayer = read_video(path, 1, topic="/bayer").frames[0]
    np.testing.assert_array_equal(bayer[4:-4, 4:-4], flat[4:-4, 4:-4])  # a flat colour demosaics exactly
    with pytest.raises(InputError, match=r"image encoding '16UC1' is not supported; supported: rgb8"):
        read_video(path, 1, topic="/depth")
    with pytest.raises(InputError, match=r"several image topics: /bayer .*--video-topic"):
        read_video(path, 1)
    with pytest.raises(InputError, match="applies to ROS bags only"):
        read_video(_text_file(tmp_path), 1, topic="/png")


# ------------------------------------------------------------------------------------ main command
@pytest.mark.parametrize("kind", ["ros1", "sqlite3"])
def test_main_command_answers_on_a_bag(bags, scene, kind, capsys):
    from evcascade import infer

    path = str(bags[kind])
    code = infer.main(["--events", path, "--video", path, "--json", "--max-new-tokens", "4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    stamps_us = np.asarray(scene["stamps"]) // 1000
    t = scene["reference"][2]
    start, end = result["inputs"]["window_us"]
    # the overlap of both streams, each on the bag's clock (no alignment applied)
    assert (start, end) == (max(int(stamps_us[0]), int(t[0])), min(int(stamps_us[-1]), int(t[-1])) + 1)
    assert result["inputs"]["num_events"] == int(((t >= start) & (t < end)).sum())
    assert result["text"]
    code = infer.main(["--events", path, "--video", path, "--events-topic", "/nope", "--json"])
    assert code == 2 and "no topic '/nope'" in capsys.readouterr().err
    code = infer.main(["--events", path, "--video", path, "--video-topic", "/events", "--json"])
    assert code == 2 and "not an image topic" in capsys.readouterr().err


def test_load_clip_and_generate_take_the_topics(bags, scene, monkeypatch):
    from types import SimpleNamespace

    import evcascade.clip as clip_module
    from evcascade.cascade import Cascade

    path = bags["mcap"]
    clip = clip_module.load_clip(path, path, num_frames=3, events_topic="/events", video_topic="/cam/image_raw")
    stamps_us = np.asarray(scene["stamps"]) // 1000
    assert clip.video.timestamps_us[0] == stamps_us[0] and len(clip.video) == 3
    assert_events(clip.events, scene["reference"], clip.start_us, clip.end_us)
    with pytest.raises(InputError, match="no topic '/other'"):
        clip_module.load_clip(path, path, events_topic="/other")

    seen = {}

    class Stop(Exception):
        pass

    def fake_load_clip(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(clip_module, "load_clip", fake_load_clip)
    with pytest.raises(Stop):
        fake = SimpleNamespace(num_frames=2)
        fake._clip = functools.partial(Cascade._clip, fake)
        Cascade.generate(fake, path, path, events_topic="/events", video_topic="/cam/image_raw")
    assert (seen["events_topic"], seen["video_topic"]) == ("/events", "/cam/image_raw")


def test_libcaer_cmp_vectors_decode_like_single_events():
    from evcascade.events.io.ros import _CmpState, _decode_libcaer_cmp

    rng = np.random.default_rng(7)
    t = np.repeat(np.arange(0, 40_000, 997), 6)  # bursts of equal time: (t, x, p) runs become vectors
    x = np.repeat(rng.integers(0, 60, t.shape[0] // 6), 6)
    y = (rng.integers(0, 30, t.shape[0]) + np.tile([0, 1, 2, 5, 13, 40], t.shape[0] // 6)) % 64
    p = np.repeat(rng.integers(0, 2, t.shape[0] // 6), 6)
    keep = np.unique(np.stack([t, x, p, y], 1), axis=0, return_index=True)[1]
    x, y, t, p = x[keep], y[keep], t[keep], p[keep]
    for use_vectors in (True, False):
        words, order = encode_libcaer_cmp(x, y, t, p, use_vectors=use_vectors)
        assert ((words >> 12) == 5).any() == use_vectors
        packet, _ = _decode_libcaer_cmp(np.frombuffer(words.tobytes(), np.uint8), 10_000_000, _CmpState())
        np.testing.assert_array_equal(packet.x, x[order])
        np.testing.assert_array_equal(packet.y, y[order])
        np.testing.assert_array_equal(packet.p, p[order])
        np.testing.assert_array_equal(packet.t_us, t[order] + 10_000)
