"""Undistort event coordinates with a per-pixel map, as DSEC ships in ``rectify_map.h5``.

``rectify_map`` has shape (H, W, 2): entry [y, x] is the rectified (x, y) of raw pixel (x, y),
as floats. Rectified coordinates are rounded to the nearest pixel, and events whose rectified
pixel falls outside the sensor are dropped, so a rectified window can hold fewer events than
the raw one. Time order is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evcascade.errors import InputError, require_file
from evcascade.events.container import Events


def load_rectify_map(source, sensor_size: tuple[int, int]) -> np.ndarray:
    """A (H, W, 2) float map from a ``rectify_map.h5`` path or an array, checked against ``sensor_size``."""
    if isinstance(source, (str, Path)):
        from evcascade.events.io.hdf5 import open_h5, require_datasets

        path = require_file(source)
        with open_h5(path) as handle:
            array = np.asarray(require_datasets(handle, path, ["rectify_map"])["rectify_map"][()])
        name = str(source)
    else:
        array, name = np.asarray(source), "rectify_map array"
    width, height = sensor_size
    if array.shape != (height, width, 2):
        raise InputError(f"{name}: rectify_map must have shape (H, W, 2) = ({height}, {width}, 2), got {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{name}: rectify_map must be numeric, got dtype {array.dtype}")
    return array


def rectify(events: Events, rectify_map: np.ndarray) -> Events:
    """Events moved to their rectified pixels (rounded); those landing outside the sensor are dropped.

    >>> ev = Events.from_arrays([0, 1], [0, 0], [5, 6], [1, 0], sensor_size=(2, 1))
    >>> shift = np.array([[[1.2, 0.0], [2.0, 0.0]]])  # pixel 0 -> x 1.2, pixel 1 -> x 2.0 (outside)
    >>> rectify(ev, shift).x.tolist()
    [1]
    """
    width, height = events.sensor_size
    target = rectify_map[events.y.astype(np.int64), events.x.astype(np.int64)]  # [N, 2] rectified (x, y)
    x_new = np.rint(target[:, 0])
    y_new = np.rint(target[:, 1])
    inside = (x_new >= 0) & (x_new < width) & (y_new >= 0) & (y_new < height)  # [N]
    return Events(
        x=x_new[inside].astype(np.uint16), y=y_new[inside].astype(np.uint16),
        t_us=events.t_us[inside], p=events.p[inside], sensor_size=events.sensor_size,
    )
