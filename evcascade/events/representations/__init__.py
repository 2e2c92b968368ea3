"""Event representations: pure, vectorised torch functions from an event window to a tensor.

Each accepts `Events` (numpy) or `TorchEvents`, runs on CPU and CUDA alike, never changes its
input, and returns zeros (white images for `event_images`) of the right shape for an empty window.

| function       | output                         | reference it matches          |
|----------------|--------------------------------|-------------------------------|
| histogram      | float32 [2, H, W] counts       | tonic ToFrame (one frame)     |
| voxel_grid     | float32 [num_bins, H, W]       | tonic ToVoxelGrid             |
| time_surface   | float32 [2, H, W] in [0, 1]    | tonic to_timesurface_numpy    |
| event_images   | uint8 [num_images, H, W, 3]    | EventGPT's per-event drawing  |
"""

from evcascade.events.representations.event_images import event_images
from evcascade.events.representations.histogram import histogram
from evcascade.events.representations.time_surface import time_surface
from evcascade.events.representations.voxel_grid import voxel_grid

__all__ = ["event_images", "histogram", "time_surface", "voxel_grid"]
