"""Which reader a file needs: by ``format=``, else by suffix, else (or when a suffix is ambiguous) by content.

Content signatures: HDF5's magic (then DSEC if it has ``events/`` and ``ms_to_idx``), NumPy's
``\\x93NUMPY`` (then EventGPT if the dtype holds Python objects), a zip header (``.npz``),
``#!AER-DAT4.0`` (AEDAT4), a Prophesee ``%`` header (``.raw`` if it names an EVT encoding or
ends with ``% end``, else ``.dat``), and text whose first event line is four numbers.
"""

from __future__ import annotations

from pathlib import Path

from evcascade.errors import InputError

FORMATS = ("dsec", "hdf5", "npz", "npy", "eventgpt", "txt", "csv", "evt2", "evt3", "raw", "dat", "aedat4")
ALIASES = {"h5": "hdf5", "evt2.0": "evt2", "evt3.0": "evt3", "aedat": "aedat4", "text": "txt"}
SUFFIXES = {
    ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".npz": "npz", ".npy": "npy", ".txt": "txt",
    ".csv": "csv", ".raw": "raw", ".dat": "dat", ".aedat4": "aedat4",
}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_NUMPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_AEDAT4_MAGIC = b"#!AER-DAT4.0"


def supported() -> str:
    """One line listing formats and suffixes, for error messages."""
    return f"supported formats: {', '.join(FORMATS)} (suffixes {', '.join(sorted(SUFFIXES))})"


def normalise_format(format: str | None) -> str | None:
    """A user's ``format=`` value in canonical form, or an InputError listing the valid ones."""
    if format is None:
        return None
    name = str(format).lower().lstrip(".")
    name = ALIASES.get(name, name)
    if name not in FORMATS:
        raise InputError(f"unknown event file format {format!r}; {supported()}")
    return name


def _sniff(path: Path) -> str | None:
    """A format name from the first bytes, or None."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head.startswith(_HDF5_MAGIC):
        return "hdf5"
    if head.startswith(_NUMPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    if head.startswith(_AEDAT4_MAGIC):
        return "aedat4"
    if head.startswith(b"%"):
        from evcascade.events.io.prophesee import header_fields, raw_encoding, read_header

        lines, _ = read_header(path)
        fields = header_fields(lines)
        if raw_encoding(fields) is not None or "evt" in fields or "end" in fields:
            return "raw"
        return "dat"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    for line in text.splitlines()[:3]:
        fields = line.replace(",", " ").split()
        if len(fields) == 4 and all(_is_number(f) for f in fields):
            return "txt"
    return None


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _refine(path: Path, family: str) -> str:
    """Settle what a suffix leaves open: DSEC vs generic HDF5, EventGPT pickle vs structured .npy."""
    if family == "hdf5":
        from evcascade.events.io.dsec import is_dsec
        from evcascade.events.io.hdf5 import open_h5

        with open_h5(path) as handle:
            return "dsec" if is_dsec(handle) else "hdf5"
    if family == "npy":
        from evcascade.events.io.numpy_files import npy_header_dtype

        return "eventgpt" if npy_header_dtype(path).hasobject else "npy"
    return family


def detect_format(path: Path, format: str | None = None) -> str:
    """The canonical format name for an existing file (``format=`` wins when given).

    ``raw`` stays ``raw`` (the Prophesee reader settles EVT 2.0 vs 3.0 from the header).
    """
    chosen = normalise_format(format)
    if chosen is not None:
        return chosen
    family = SUFFIXES.get(path.suffix.lower())
    if family is None:
        family = _sniff(path)
    if family is None:
        raise InputError(f"cannot tell the event file format of {str(path)!r} from its name or content; {supported()}")
    if family in ("hdf5", "npy"):
        sniffed = _sniff(path)
        if sniffed != family:
            raise InputError(
                f"{str(path)!r} has suffix {path.suffix!r} but its content is not {family.upper()} "
                f"(looks like {sniffed or 'nothing recognised'}); {supported()}"
            )
    return _refine(path, family)
