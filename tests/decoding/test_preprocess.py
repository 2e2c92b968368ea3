"""Frame preprocessing against the Hugging Face reference, ``VideoLlavaImageProcessor`` (PIL-based): exactly."""

import json

import numpy as np
import pytest
import torch

from evcascade.errors import InputError, InputFileNotFoundError
from evcascade.preprocess import CLIP_MEAN, CLIP_STD, PreprocessConfig, preprocess_frames, preprocessor_config_from


def reference(frames: np.ndarray, processor=None, **kwargs) -> torch.Tensor:
    """The reference processor (a fresh one unless given), frame by frame, as a user of transformers would call it."""
    from transformers import VideoLlavaImageProcessor

    processor = processor or VideoLlavaImageProcessor(**kwargs)
    out = [processor.preprocess(frame, return_tensors="pt", return_legacy_image_output=False,
                                input_data_format="channels_last")["pixel_values"] for frame in frames]
    return torch.cat(out)  # [T, 3, crop_h, crop_w]


def random_sizes(count: int, seed: int) -> list[tuple[int, int]]:
    """(H, W) of landscape, portrait and extreme frames: aspect ratios from 1:40 to 40:1, edges 1 .. 1500 px."""
    rng = np.random.default_rng(seed)
    sizes = [(1, 40), (40, 1), (3, 120), (1000, 300), (708, 245), (245, 708), (1080, 1440), (1440, 1080)]
    while len(sizes) < count:
        short = int(rng.integers(1, 260))
        ratio = float(np.exp(rng.uniform(0, np.log(40)))) if rng.random() < 0.35 else float(rng.uniform(1, 3))
        long = min(1500, max(short, int(short * ratio)))
        sizes.append((long, short) if rng.random() < 0.5 else (short, long))  # portrait half the time
    return sizes


def structured_frames(height: int, width: int) -> np.ndarray:
    """Gradients, a checkerboard, hard edges and flat colour: the content real frames have."""
    yy, xx = np.mgrid[0:height, 0:width]
    gradient = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1)
    checker = (((yy // 7) + (xx // 5)) % 2 * 255)[..., None].repeat(3, -1)
    flat = np.empty((height, width, 3)); flat[:] = (200, 30, 90)
    edge = np.zeros((height, width, 3)); edge[:, width // 3:] = 255
    return np.stack([gradient, checker, flat, edge]).astype(np.uint8)


def test_sweep_of_random_frame_sizes_equals_the_reference_exactly():
    from transformers import VideoLlavaImageProcessor

    processor = VideoLlavaImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    rng = np.random.default_rng(14)
    sizes = random_sizes(240, seed=14)
    assert sum(h > w for h, w in sizes) > 80 and sum(max(h, w) >= 8 * min(h, w) for h, w in sizes) > 20
    for height, width in sizes:
        frame = rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8)
        ours, ref = preprocess_frames(frame, size=64, crop_size=64), reference(frame, processor)
        assert torch.equal(ours, ref), (height, width, float((ours - ref).abs().max()))


@pytest.mark.parametrize("height,width", [(480, 640), (1080, 1440), (1000, 300), (708, 245), (37, 500)])
def test_default_clip_recipe_equals_the_reference_on_random_and_structured_frames(height, width):
    rng = np.random.default_rng(height * 1000 + width)
    for frames in (rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8), structured_frames(height, width)):
        ours, ref = preprocess_frames(frames), reference(frames)
        assert ours.shape == (frames.shape[0], 3, 224, 224) and ours.dtype == torch.float32
        assert torch.equal(ours, ref)
    white = preprocess_frames(np.full((1, 224, 224, 3), 255, np.uint8))
    expected = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(white[0, :, 100, 100], expected)


def test_other_sizes_crops_statistics_and_bilinear_equal_the_reference():
    frames = np.random.default_rng(2).integers(0, 256, (2, 90, 160, 3), dtype=np.uint8)
    ours = preprocess_frames(frames, size=48, crop_size=(40, 32), mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25),
                             resample="bilinear")
    ref = reference(frames, size={"shortest_edge": 48}, crop_size={"height": 40, "width": 32},
                    image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.25], resample=2)
    assert ours.shape == (2, 3, 40, 32) and torch.equal(ours, ref)


def test_tensor_and_numpy_inputs_agree_and_input_is_untouched():
    frames = np.random.default_rng(3).integers(0, 256, (2, 50, 70, 3), dtype=np.uint8)
    before = frames.copy()
    as_tensor = torch.from_numpy(frames.copy())
    from_numpy = preprocess_frames(frames, size=32, crop_size=32)
    assert torch.equal(from_numpy, preprocess_frames(as_tensor, size=32, crop_size=32))
    assert np.array_equal(frames, before)
    sliced = frames[:, ::-1]  # a negative-stride view is accepted
    assert preprocess_frames(sliced, size=32, crop_size=32).shape == (2, 3, 32, 32)


def test_empty_clip_gives_empty_batch():
    out = preprocess_frames(np.zeros((0, 480, 640, 3), np.uint8))
    assert out.shape == (0, 3, 224, 224) and out.dtype == torch.float32


@pytest.mark.parametrize("frames,message", [
    (np.zeros((1, 8, 8, 3), np.float32), "uint8"),
    (np.zeros((8, 8, 3), np.uint8), r"\[T, H, W, 3\]"),
    (np.zeros((1, 8, 8, 4), np.uint8), r"\[T, H, W, 3\]"),
    (np.zeros((1, 0, 8, 3), np.uint8), "positive height"),
    ([[1, 2, 3]], "numpy array or tensor"),
])
def test_bad_frames_raise_input_error(frames, message):
    with pytest.raises(InputError, match=message):
        preprocess_frames(frames)


def test_bad_settings_raise_input_error():
    frames = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(InputError, match="crop_size"):
        preprocess_frames(frames, size=16, crop_size=32)
    with pytest.raises(InputError, match="resample"):
        preprocess_frames(frames, resample="lanczos")
    with pytest.raises(InputError, match="mean and std"):
        preprocess_frames(frames, std=(0.2, 0.0, 0.2))
    with pytest.raises(InputError, match="size"):
        PreprocessConfig(size=0)


def test_config_from_saved_processor_folder(tmp_path):
    from transformers import VideoLlavaImageProcessor

    VideoLlavaImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                             image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]).save_pretrained(tmp_path)
    config = preprocessor_config_from(tmp_path)
    assert config == PreprocessConfig(size=336, crop_size=(336, 336), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert preprocessor_config_from(tmp_path / "preprocessor_config.json") == config
    frames = np.random.default_rng(4).integers(0, 256, (1, 400, 500, 3), dtype=np.uint8)
    ref = reference(frames, size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                    image_mean=[0.5] * 3, image_std=[0.25] * 3)
    assert torch.equal(config(frames), ref)


def test_config_defaults_and_errors(tmp_path):
    from evcascade.models.tiny import tiny_video_llava_config

    assert preprocessor_config_from(tmp_path, tiny_video_llava_config()).crop_size == (32, 32)  # no json: tower size
    assert preprocessor_config_from(tmp_path) == PreprocessConfig()
    with pytest.raises(InputFileNotFoundError, match="nowhere"):
        preprocessor_config_from(tmp_path / "nowhere")
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        preprocessor_config_from(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"resample": 1}))
    with pytest.raises(InputError, match="resample"):
        preprocessor_config_from(tmp_path)
    with pytest.raises(InputError, match="do_center_crop"):
        preprocessor_config_from({"do_center_crop": False})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    frames = np.random.default_rng(5).integers(0, 256, (8, 480, 640, 3), dtype=np.uint8)
    on_gpu = preprocess_frames(frames, device="cuda")
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), preprocess_frames(frames))
