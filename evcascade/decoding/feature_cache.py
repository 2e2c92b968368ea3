"""A bounded least-recently-used cache with hit/miss counts, and content keys for tensors.

The verifier keeps two of these: projected video features keyed by the clip's content, and the KV cache of
a clip's shared prompt prefix (everything up to the last visual token). Both are expensive to recompute
(the vision tower over 8 frames; a ~2000-token prefill) and cheap to look up.

>>> cache = LRUCache(maxsize=2)
>>> cache.put("a", 1); cache.put("b", 2); cache.get("a")
1
>>> cache.put("c", 3)          # evicts "b", the least recently used
>>> "b" in cache, cache.stats()
(False, {'hits': 1, 'misses': 0, 'evictions': 1, 'size': 2, 'maxsize': 2})
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

import torch

from evcascade.errors import InputError

V = TypeVar("V")


class LRUCache(Generic[V]):
    """A dict of at most ``maxsize`` entries that drops the least recently used one; ``maxsize=0`` stores nothing."""

    def __init__(self, maxsize: int) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise InputError(f"cache size must be an int >= 0, got {maxsize!r}")
        self.maxsize = maxsize
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: Hashable) -> V | None:
        """The value stored under ``key`` (now the most recently used), or None on a miss; counts both."""
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]
        self.misses += 1
        return None

    def put(self, key: Hashable, value: V) -> None:
        """Store ``value`` as the most recently used entry, evicting the oldest entries beyond ``maxsize``."""
        if self.maxsize == 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        """Drop every entry (the counters keep running)."""
        self._entries.clear()

    def __contains__(self, key: Hashable) -> bool:  # a peek: does not count as a hit or change the order
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        """Counters for reports: hits, misses, evictions, current size and the bound."""
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                "size": len(self._entries), "maxsize": self.maxsize}


def content_key(tensor: torch.Tensor) -> str:
    """A hex digest of a tensor's shape, dtype and bytes: equal keys mean equal contents (any device, any dtype).

    >>> content_key(torch.zeros(2, 3)) == content_key(torch.zeros(2, 3))
    True
    >>> content_key(torch.zeros(2, 3)) == content_key(torch.zeros(3, 2))
    False
    """
    flat = tensor.detach().contiguous().reshape(-1).cpu()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{tuple(tensor.shape)}|{tensor.dtype}|".encode())
    # a uint8 view hashes any dtype (numpy has no bfloat16) without a conversion
    digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()
