"""NumPy event files: ``.npz`` (arrays x, y, t, p or one structured array), ``.npy`` structured
arrays (fields x, y, t, p), and EventGPT's ``.npy`` (a pickled dict {x, y, p, t}).

Times are microseconds. A ``.npy`` structured array is memory-mapped, so a window read touches
only the pages its binary search and its rows need. A pickled file runs code when it is loaded,
so it is read only with ``allow_pickle=True``; without it the reader inspects the ``.npy``
header alone (never the payload) and says how to opt in.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from evcascade.errors import InputError
from evcascade.events.container import Events
from evcascade.events.io.common import EventFileInfo, assemble, check_integer_dtype, searchsorted_column
from evcascade.events.io.registry import EventFormat

FIELDS = ("x", "y", "t", "p")


def npy_header_dtype(path: Path) -> np.dtype:
    """The dtype in a ``.npy`` header, read without loading (or unpickling) the payload."""
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(handle)
        except ValueError as err:
            raise InputError(f"{str(path)!r} is not a readable .npy file: {err}") from None
    return dtype


def _pickle_error(path: Path) -> InputError:
    return InputError(
        f"{str(path)!r} holds pickled Python objects (EventGPT's event format is a pickled dict). "
        "Loading a pickle runs code from the file; if you trust it, pass allow_pickle=True"
    )


def _sensor_from(mapping, path: Path) -> tuple[int, int] | None:
    """(W, H) from an optional ``sensor_size`` entry, else from ``width``/``height`` entries."""
    if "sensor_size" in mapping:
        values = np.asarray(mapping["sensor_size"]).ravel()
        if values.shape[0] != 2:
            raise InputError(f"{str(path)!r}: 'sensor_size' must hold (W, H), got {values.tolist()}")
        return int(values[0]), int(values[1])
    if "width" in mapping and "height" in mapping:
        return int(np.asarray(mapping["width"])), int(np.asarray(mapping["height"]))
    return None


def _columns_from_mapping(mapping, path: Path, what: str) -> dict[str, np.ndarray]:
    """x/y/t/p arrays from a dict-like (npz, EventGPT dict) or its one structured array."""
    keys = list(mapping.keys())
    t_key = "t" if "t" in keys else ("t_us" if "t_us" in keys else None)
    if t_key is not None and all(k in keys for k in ("x", "y", "p")):
        return {"x": np.asarray(mapping["x"]), "y": np.asarray(mapping["y"]),
                "t": np.asarray(mapping[t_key]), "p": np.asarray(mapping["p"])}
    for key in keys:
        value = np.asarray(mapping[key])
        if value.dtype.names and all(f in value.dtype.names for f in FIELDS):
            return {f: value[f] for f in FIELDS}
    raise InputError(
        f"{str(path)!r}: {what} needs arrays x, y, t, p (or one structured array with those fields); it has {keys}"
    )


def _check_columns(columns: dict[str, np.ndarray], path: Path) -> None:
    for name, values in columns.items():
        if values.ndim != 1:
            raise InputError(f"{str(path)!r}: field {name!r} must be 1-D, got shape {values.shape}")
        if name == "t" and np.issubdtype(values.dtype, np.floating):
            continue  # float microseconds are rounded by Events.from_arrays
        check_integer_dtype(str(path), name, values.dtype, allow_bool=name == "p")


def _load_npz(path: Path) -> tuple[dict[str, np.ndarray], tuple[int, int] | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            columns = _columns_from_mapping(archive, path, ".npz file")
            return columns, _sensor_from(archive, path)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise _pickle_error(path) from None
        raise InputError(f"{str(path)!r} is not a readable .npz file: {err}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise InputError(f"{str(path)!r} is not a readable .npz file (truncated or corrupt?): {err}") from None


def _load_eventgpt(path: Path) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=True)
    except Exception as err:  # unpickling can raise anything; the user must learn which file failed
        raise InputError(f"{str(path)!r}: could not load the pickled event file: {err}") from None
    if isinstance(loaded, np.ndarray) and loaded.dtype == object and loaded.shape == ():
        loaded = loaded.item()
    if not isinstance(loaded, dict):
        raise InputError(f"{str(path)!r}: expected a pickled dict {{x, y, p, t}}, got {type(loaded).__name__}")
    return _columns_from_mapping(loaded, path, "EventGPT dict")


def _read_columns(path: Path, start_us, end_us, *, sort, sensor_size, source_size=None, columns) -> Events:
    _check_columns(columns, path)
    return assemble(str(path), columns["x"], columns["y"], columns["t"], columns["p"],
                    sensor_size or source_size, start_us=start_us, end_us=end_us, sort=sort)


def read_npz(path: Path, start_us, end_us, *, sort=False, sensor_size=None) -> Events:
    """Events from a ``.npz`` (whole-file load: zip members cannot be read partially)."""
    columns, stored_size = _load_npz(path)
    return _read_columns(path, start_us, end_us, sort=sort, sensor_size=sensor_size,
                         source_size=stored_size, columns=columns)


def read_npy(path: Path, start_us, end_us, *, sort=False, sensor_size=None, allow_pickle=False) -> Events:
    """Events from a structured ``.npy`` (memory-mapped window read) or, with allow_pickle, EventGPT's dict."""
    dtype = npy_header_dtype(path)
    if dtype.hasobject:
        if not allow_pickle:
            raise _pickle_error(path)
        return read_eventgpt(path, start_us, end_us, sort=sort, sensor_size=sensor_size, allow_pickle=True)
    if not dtype.names or not all(f in dtype.names for f in FIELDS):
        raise InputError(
            f"{str(path)!r}: a .npy event file must be a structured array with fields x, y, t, p; got dtype {dtype}"
        )
    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise InputError(f"{str(path)!r} is not a readable .npy file (truncated?): {err}") from None
    columns = {f: table[f] for f in FIELDS}
    _check_columns(columns, path)
    if table.ndim != 1:
        raise InputError(f"{str(path)!r}: the structured array must be 1-D, got shape {table.shape}")
    if sort or sensor_size is None:
        # Sorting, or inferring the sensor size from the maxima, needs every row anyway.
        return _read_columns(path, start_us, end_us, sort=sort, sensor_size=sensor_size,
                             columns={f: np.asarray(v) for f, v in columns.items()})
    # A bisection on the memory-mapped column touches O(log n) pages (np.searchsorted would first
    # copy the strided field, reading the whole file).
    t_col = columns["t"]
    lo = 0 if start_us is None else searchsorted_column(t_col, start_us)
    hi = table.shape[0] if end_us is None else searchsorted_column(t_col, end_us, lo)
    return assemble(str(path), *(np.asarray(columns[f][lo:hi]) for f in FIELDS), sensor_size, row_offset=lo)


def read_eventgpt(path: Path, start_us, end_us, *, sort=False, sensor_size=None, allow_pickle=False) -> Events:
    """Events from EventGPT's pickled dict {x, y, p, t} (t in microseconds); needs allow_pickle=True."""
    if not allow_pickle:
        raise _pickle_error(path)
    return _read_columns(path, start_us, end_us, sort=sort, sensor_size=sensor_size, columns=_load_eventgpt(path))


def numpy_info(path: Path, format: str, *, allow_pickle: bool = False) -> EventFileInfo:
    """Summary of a numpy event file; a structured ``.npy`` is memory-mapped (cheap), others loaded."""
    stored_size = None
    if format == "npz":
        columns, stored_size = _load_npz(path)
    elif format == "npy" and not npy_header_dtype(path).hasobject:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
        if not table.dtype.names or "t" not in table.dtype.names:
            raise InputError(f"{str(path)!r}: expected a structured array with fields x, y, t, p; got dtype {table.dtype}")
        columns = {"t": table["t"]}
    else:
        if not allow_pickle:
            raise _pickle_error(path)
        format = "eventgpt"
        columns = _load_eventgpt(path)
    t_col = columns["t"]
    n = int(t_col.shape[0])
    start, end = (int(t_col[0]), int(t_col[n - 1]) + 1) if n else (None, None)
    return EventFileInfo(path, format, stored_size, start, end, n)


def _sniff(path: Path, head: bytes) -> str | None:
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    return "npz" if head.startswith(b"PK\x03\x04") else None


def _refine(path: Path, family: str) -> str:
    """EventGPT's pickled dict when the .npy dtype holds Python objects (read from the header only)."""
    if family == "npy" and npy_header_dtype(path).hasobject:
        return "eventgpt"
    return family


def _read(path: Path, start_us, end_us, *, kind, sort, sensor_size, options) -> Events:
    if kind == "npz":
        return read_npz(path, start_us, end_us, sort=sort, sensor_size=sensor_size)
    reader = read_npy if kind == "npy" else read_eventgpt
    return reader(path, start_us, end_us, sort=sort, sensor_size=sensor_size, allow_pickle=options.allow_pickle)


def _info(path: Path, *, kind, options) -> EventFileInfo:
    return numpy_info(path, kind, allow_pickle=options.allow_pickle)


FORMAT = EventFormat(
    names=("npz", "npy", "eventgpt"), read=_read, info=_info, suffixes=(".npz", ".npy"),
    suffix_names={".npz": "npz", ".npy": "npy"}, sniff=_sniff, refine=_refine, verify_suffix=("npy",),
)
