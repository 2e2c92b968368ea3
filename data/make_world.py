"""Generate a synthetic-world data set as DSEC-like folders plus manifest.json (see data/README.md).

    python data/make_world.py --out runs/world --num-scenes 2000 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields

from evcascade.data.layout import write_world
from evcascade.data.world import WorldConfig
from evcascade.errors import InputError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (created); manifest.json goes at its top")
    parser.add_argument("--num-scenes", type=int, required=True, help="number of scenes")
    parser.add_argument("--seed", type=int, default=0, help="set seed; scene i's seed derives from (seed, i)")
    defaults = WorldConfig()
    for field in fields(WorldConfig):  # one flag per WorldConfig field, same name and default
        if field.name in ("shapes", "colours"):
            parser.add_argument(
                f"--{field.name.replace('_', '-')}", nargs="+", default=list(getattr(defaults, field.name)),
                help=f"WorldConfig.{field.name} (default %(default)s)",
            )
        else:
            kind = type(getattr(defaults, field.name))
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=getattr(defaults, field.name),
                                help=f"WorldConfig.{field.name} (default %(default)s)")
    parser.add_argument("--windows-per-scene", type=int, default=0,
                        help="entries per scene asking about a window of 50 ms - 1.5 s of it, besides the whole clip")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = WorldConfig(**{f.name: (tuple(v) if isinstance(v := getattr(args, f.name), list) else v)
                                for f in fields(WorldConfig)})
        started = time.perf_counter()
        manifest = write_world(args.out, args.num_scenes, args.seed, config,
                               windows_per_scene=args.windows_per_scene, progress=not args.no_progress)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.num_scenes} scenes in {time.perf_counter() - started:.1f} s; manifest: {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
