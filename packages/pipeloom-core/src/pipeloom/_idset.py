"""A set of task ids that stays small for a million of them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = ["IdSet"]

_Pair = TypeVar("_Pair", bound=tuple[Any, ...])


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

    def add_all(self, task_ids: Iterable[int]) -> None:
        """Record every id of ``task_ids`` (`add`, without a call per id: the writer's hot path)."""
        limit = self._BITMAP_LIMIT
        bits = self._bits
        for task_id in task_ids:
            if 0 <= task_id < limit:
                byte = task_id >> 3
                if byte >= len(bits):
                    bits.extend(bytes(max(byte + 1 - len(bits), len(bits))))
                bits[byte] |= 1 << (task_id & 7)
            else:
                self._other.add(task_id)

    def fresh(self, pairs: list[_Pair], unique: bool = False) -> list[_Pair]:
        """The pairs whose first item (a task id) is not in the set, each id's first pair once.

        Args:
            pairs: (task_id, ...) tuples in order.
            unique: the caller knows no id repeats in ``pairs`` (skips tracking repeats).
        """
        limit = self._BITMAP_LIMIT
        bits, other = self._bits, self._other
        size = len(bits)
        seen: set[int] = set()
        out: list[_Pair] = []
        for pair in pairs:
            task_id = pair[0]
            if not unique:
                if task_id in seen:
                    continue
                seen.add(task_id)
            if type(task_id) is int and 0 <= task_id < limit:
                byte = task_id >> 3
                if byte < size and bits[byte] & (1 << (task_id & 7)):
                    continue
            elif task_id in other:
                continue
            out.append(pair)
        return out
