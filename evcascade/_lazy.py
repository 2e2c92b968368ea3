"""Lazy package attributes: public names import their module on first use (keeps ``import evcascade`` fast)."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, MutableMapping


def lazy_getattr(package: str, namespace: MutableMapping[str, Any], exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package`` that imports ``exports[name]`` once and caches the value.

    >>> ns = {}
    >>> getattr_ = lazy_getattr("pkg", ns, {"sqrt": "math"})
    >>> getattr_("sqrt")(4.0), "sqrt" in ns
    (2.0, True)
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
