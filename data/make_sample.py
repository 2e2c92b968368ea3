"""Write the bundled sample clip, evcascade/assets/sample/{events.h5, video.mp4, annotations.json}.

Deterministic: a hand-built scene (a fast red circle moving right, a slow blue square moving up, a
static yellow triangle) rendered with the default WorldConfig and simulator seed 0.

    python data/make_sample.py            # writes into evcascade/assets/sample/
    python data/make_sample.py --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from evcascade.data.layout import write_scene
from evcascade.data.world import Scene, SceneObject, WorldConfig, render_sample, sample_background

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "evcascade" / "assets" / "sample"


def sample_scene_graph(config: WorldConfig) -> Scene:
    """The sample's scene: objects placed by hand so that they stay in view and apart for 1.5 s."""
    side_px = min(config.width, config.height)
    objects = (
        SceneObject("circle", "red", "big", 0.16 * side_px, 0.2 * config.width, 0.3 * config.height, "right", "fast"),
        SceneObject("square", "blue", "small", 0.10 * side_px, 0.8 * config.width, 0.8 * config.height, "up", "slow"),
        SceneObject("triangle", "yellow", "small", 0.10 * side_px, 0.25 * config.width, 0.78 * config.height),
    )
    background = sample_background(np.random.default_rng(2024))
    return Scene(config.width, config.height, config.duration_us, objects, background, camera_direction=None, seed=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SAMPLE_DIR, help=f"output folder (default {SAMPLE_DIR})")
    args = parser.parse_args(argv)
    config = WorldConfig()
    sample = render_sample(sample_scene_graph(config), config, seed=0)
    write_scene(sample, args.out, config)
    sizes = {p.name: p.stat().st_size for p in sorted(args.out.iterdir()) if p.is_file()}
    print(f"wrote {args.out}: {len(sample.events)} events, {len(sample.video)} frames; "
          + ", ".join(f"{name} {size / 1024:.0f} KiB" for name, size in sizes.items()))
    print(sample.caption)
    return 0


if __name__ == "__main__":
    sys.exit(main())
