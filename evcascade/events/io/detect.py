"""Which reader a file needs: by ``format=``, else by suffix, else (or when a suffix is ambiguous) by content.

Everything here is driven by the registry (``registry.py``): each format module declares its
names, suffixes and content check. Content signatures: HDF5's magic (then DSEC if it has
``events/`` and ``ms_to_idx``), NumPy's ``\\x93NUMPY`` (then EventGPT if the dtype holds Python
objects), a zip header (``.npz``), ``#!AER-DAT4.0`` / ``#!AER-DAT2.0`` / ``#!AER-DAT3.1`` (AEDAT),
``Event Stream`` (.es), ``#ROSBAG V2.0`` / MCAP / SQLite magic (ROS bags), a Prophesee ``%`` header
(``.raw`` if it names an EVT encoding or ends with ``% end``, else ``.dat``), and text whose first
event line is four numbers. A folder is an event source only when a format accepts it (a ROS 2
bag folder, with its ``metadata.yaml``).
"""

from __future__ import annotations

from pathlib import Path

from evcascade.errors import InputError
from evcascade.events.io.registry import formats, reader_for, registry


def __getattr__(name: str):
    # FORMATS / ALIASES / SUFFIXES are computed from the registry on first use (the registry
    # imports every reader module, which import this one).
    if name == "FORMATS":
        return formats()
    if name == "ALIASES":
        return {alias: canon for fmt in registry() for alias, canon in fmt.aliases.items()}
    if name == "SUFFIXES":
        return _suffixes()
    raise AttributeError(name)


def _suffixes() -> dict[str, str]:
    table: dict[str, str] = {}
    for fmt in registry():
        for suffix in fmt.suffixes:
            table[suffix] = fmt.suffix_names.get(suffix, fmt.names[0])
    return table


def supported() -> str:
    """One line listing formats and suffixes, for error messages."""
    return f"supported formats: {', '.join(formats())} (suffixes {', '.join(sorted(_suffixes()))})"


def normalise_format(format: str | None) -> str | None:
    """A user's ``format=`` value in canonical form, or an InputError listing the valid ones."""
    if format is None:
        return None
    aliases = {alias: canon for fmt in registry() for alias, canon in fmt.aliases.items()}
    name = str(format).lower().lstrip(".")
    name = aliases.get(name, name)
    if name not in formats():
        raise InputError(f"unknown event file format {format!r}; {supported()}")
    return name


def _sniff(path: Path) -> str | None:
    """A format name from the first bytes, or None."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    for fmt in sorted(registry(), key=lambda f: f.sniff_rank):
        if fmt.sniff is not None:
            found = fmt.sniff(path, head)
            if found is not None:
                return found
    return None


def _refine(path: Path, family: str) -> str:
    """Settle what a suffix leaves open (DSEC vs generic HDF5, EventGPT pickle vs structured .npy)."""
    fmt = reader_for(family)
    return fmt.refine(path, family) if fmt.refine is not None else family


def directory_format(path: Path) -> str | None:
    """The format of an event source that is a folder (a ROS 2 bag), or None."""
    for fmt in registry():
        if fmt.accepts_dir is not None and fmt.accepts_dir(path):
            return fmt.names[0]
    return None


def detect_format(path: Path, format: str | None = None) -> str:
    """The canonical format name for an existing file or accepted folder (``format=`` wins when given).

    ``raw`` stays ``raw`` (the Prophesee reader settles EVT 2.0 vs 3.0 from the header).
    """
    chosen = normalise_format(format)
    if chosen is not None:
        return chosen
    if path.is_dir():
        found = directory_format(path)
        if found is None:
            raise InputError(f"expected a file, got a directory: {str(path)!r}")
        return found
    family = _suffixes().get(path.suffix.lower())
    if family is None:
        family = _sniff(path)
    if family is None:
        raise InputError(f"cannot tell the event file format of {str(path)!r} from its name or content; {supported()}")
    if family in reader_for(family).verify_suffix:
        sniffed = _sniff(path)
        if sniffed != family:
            raise InputError(
                f"{str(path)!r} has suffix {path.suffix!r} but its content is not {family.upper()} "
                f"(looks like {sniffed or 'nothing recognised'}); {supported()}"
            )
    return _refine(path, family)
