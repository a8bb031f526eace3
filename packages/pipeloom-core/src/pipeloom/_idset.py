"""A set of task ids that stays small for a million of them."""

from __future__ import annotations

__all__ = ["IdSet"]


class IdSet:
    """Task ids seen so far, in about one bit per id for the usual 1..N ids.

    A set of a million ints costs tens of megabytes; a run of a million generated tasks must
    stay small, so ids below 2**27 live in a growing bitmap and only others in a set.
    """

    __slots__ = ("_bits", "_other")
    _BITMAP_LIMIT = 1 << 27

    def __init__(self) -> None:
        self._bits = bytearray()
        self._other: set[int] = set()

    def add(self, task_id: int) -> bool:
        """Record ``task_id``; False when it was already there."""
        if 0 <= task_id < self._BITMAP_LIMIT:
            byte, mask = task_id >> 3, 1 << (task_id & 7)
            bits = self._bits
            if byte >= len(bits):
                bits.extend(bytes(max(byte + 1 - len(bits), len(bits))))
            if bits[byte] & mask:
                return False
            bits[byte] |= mask
            return True
        if task_id in self._other:
            return False
        self._other.add(task_id)
        return True

    def __contains__(self, task_id: object) -> bool:
        """Whether ``task_id`` was added."""
        if type(task_id) is not int:
            return task_id in self._other
        if 0 <= task_id < self._BITMAP_LIMIT:
            byte = task_id >> 3
            bits = self._bits
            return byte < len(bits) and bool(bits[byte] & (1 << (task_id & 7)))
        return task_id in self._other
