"""A least-recently-used map bounded in bytes (the U-Net features kept for re-queries)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class ByteLRU:
    """key -> value with a size in bytes; inserting past ``max_bytes`` evicts the oldest entries.

    An entry larger than the whole bound is not kept (``put`` returns False). Thread-safe:
    a replica's request threads and its event loop share one.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = self.evictions = 0

    def put(self, key: str, value: Any, nbytes: int) -> bool:
        with self._lock:
            if key in self._items:
                self.bytes -= self._items.pop(key)[1]
            if nbytes > self.max_bytes:
                return False
            self._items[key] = (value, nbytes)
            self.bytes += nbytes
            while self.bytes > self.max_bytes:
                _, (_, n) = self._items.popitem(last=False)
                self.bytes -= n
                self.evictions += 1
            return True

    def get(self, key: str) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> dict:
        return {"entries": len(self._items), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "evictions": self.evictions}
