"""What pages, views and checks derive from a Run, kept with the Run and counted in its bytes.

Contribution rows, a layer's queries and keys, a route graph, a route check: each is a pure
function of the immutable Run and of the settings it was made with, so it is computed once and
kept in the Run's one `DerivedStore`, shared by every session that shows the Run and dropped with
it. The store knows the bytes it holds, so `Run.nbytes` (and the app's byte-bounded run cache)
sees everything a Run keeps alive.

A key says what was computed: an instance of a small frozen dataclass, one class per kind of
result, whose fields are the settings (``AttentionRow(layer=3, position=7)``). Two kinds never
collide, because dataclasses of different classes are never equal. A kind whose results are
many and cheap to remake (a page's figures) sets ``keep`` on its class: only that many of the
kind stay, the least recently used go first.

Threads: the lock is held to look up and to insert, never while computing (a route check is
minutes of forward passes, and other sessions must read the store meanwhile). Two threads that
ask for the same missing key at the same moment therefore both compute it; the first to finish
stores its value, the other's is dropped, and both callers get the stored one: one value per key,
sometimes computed twice.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import networkx as nx
import numpy as np
import pandas as pd
import torch

from llm_flow.errors import ArgumentError

V = TypeVar("V")
_Block = tuple[Hashable | None, int]  # (what owns the memory, or None when nothing else can share it; bytes)


class DerivedStore:
    """Results derived from one Run, keyed by what was computed (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[Hashable, Any] = {}
        self._blocks: dict[Hashable, list[_Block]] = {}  # per key: the memory its value holds
        self._owners: dict[Hashable, list[int]] = {}  # memory owner -> [bytes, entries holding it]
        self._recent: dict[type, OrderedDict[Hashable, None]] = {}  # kinds with `keep`, oldest first
        self._nbytes = 0

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value stored under `key`, or `compute()` stored under it (errors propagate and
        nothing is stored)."""
        found = self.peek(key)
        return found if found is not None else self.put(key, compute())

    def peek(self, key: Hashable) -> Any | None:
        """The value stored under `key`, or None."""
        _check_key(key)
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._touch(key)
            return value

    def put(self, key: Hashable, value: V) -> V:
        """Store `value` under `key` unless a value is there already; return the stored one."""
        _check_key(key)
        if value is None:
            raise ArgumentError("None cannot be stored: it means 'not computed yet'")
        blocks = list(_blocks(value, set()))  # measured outside the lock
        with self._lock:
            if key in self._values:
                self._touch(key)
                return self._values[key]
            self._values[key] = value
            self._blocks[key] = blocks
            for owner, size in blocks:
                self._hold(owner, size)
            self._touch(key)
            return value

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored values; memory several values share is counted once."""
        with self._lock:
            return self._nbytes

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._values)

    def clear(self, kind: type | None = None) -> None:
        """Forget every value (of one kind): for benchmarks that time a computation again."""
        with self._lock:
            for key in [k for k in self._values if kind is None or type(k) is kind]:
                self._drop(key)

    def _touch(self, key: Hashable) -> None:
        """Mark `key` as just used; drop the oldest of its kind beyond the kind's `keep`."""
        keep = getattr(type(key), "keep", None)
        if keep is None:
            return
        recent = self._recent.setdefault(type(key), OrderedDict())
        recent[key] = None
        recent.move_to_end(key)
        while len(recent) > keep:
            self._drop(next(iter(recent)))

    def _drop(self, key: Hashable) -> None:
        del self._values[key]
        self._recent.get(type(key), {}).pop(key, None)
        for owner, size in self._blocks.pop(key):
            self._release(owner, size)

    def _hold(self, owner: Hashable | None, size: int) -> None:
        if owner is None:
            self._nbytes += size
            return
        held = self._owners.setdefault(owner, [size, 0])
        if not held[1]:
            self._nbytes += size
        held[1] += 1

    def _release(self, owner: Hashable | None, size: int) -> None:
        if owner is None:
            self._nbytes -= size
            return
        held = self._owners[owner]
        held[1] -= 1
        if not held[1]:
            self._nbytes -= held[0]
            del self._owners[owner]


def nbytes_of(value: object) -> int:
    """Bytes `value` holds, as the store counts them: every tensor's storage and every numpy
    array's buffer once (views share them), a DataFrame's deep memory usage, and each Python
    object reached (containers, dataclasses, graphs, numbers, strings) by `sys.getsizeof`."""
    counted: dict[Hashable, int] = {}
    loose = 0
    for owner, size in _blocks(value, set()):
        if owner is None:
            loose += size
        else:
            counted[owner] = size
    return loose + sum(counted.values())


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by `tensors`, counting each underlying storage once (views share storage)."""
    return sum(dict(_storage(t) for t in tensors).values())


def _storage(tensor: torch.Tensor) -> _Block:
    storage = tensor.untyped_storage()
    return ("tensor", str(tensor.device), storage.data_ptr()), storage.nbytes()


def _check_key(key: object) -> None:
    params = getattr(key, "__dataclass_params__", None)
    if isinstance(key, type) or params is None or not params.frozen:
        raise ArgumentError(f"a derived result's key must be an instance of a frozen dataclass (got {key!r})")


def _blocks(value: object, seen: set[int]) -> Iterator[_Block]:
    """The memory `value` holds, as (owner, bytes): owned memory (tensor storages, numpy
    buffers) names its owner so it is counted once however many values view it."""
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        yield _storage(value)
    elif isinstance(value, np.ndarray):
        root = value
        while isinstance(root.base, np.ndarray):
            root = root.base
        yield ("array", id(root)), root.nbytes
    elif isinstance(value, pd.DataFrame):
        yield None, int(value.memory_usage(deep=True, index=True).sum())
    elif isinstance(value, pd.Series):
        yield None, int(value.memory_usage(deep=True, index=True))
    elif isinstance(value, nx.Graph):
        yield from _graph_blocks(value, seen)
    elif hasattr(value, "to_plotly_json"):
        # A plotly figure: the description it is drawn from (a deep copy, so nothing in it can
        # be shared with other values and it is counted as loose bytes).
        yield None, nbytes_of(value.to_plotly_json())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        yield None, sys.getsizeof(value)
        for item in dataclasses.fields(value):
            yield from _blocks(getattr(value, item.name), seen)
    elif isinstance(value, Mapping):
        yield None, sys.getsizeof(value)
        for key, item in value.items():
            yield from _blocks(key, seen)
            yield from _blocks(item, seen)
    elif isinstance(value, (list, tuple, set, frozenset)):
        yield None, sys.getsizeof(value)
        for item in value:
            yield from _blocks(item, seen)
    else:
        yield None, sys.getsizeof(value)


def _graph_blocks(graph: nx.Graph, seen: set[int]) -> Iterator[_Block]:
    """A networkx graph: its attribute dict, each node with its attributes, each edge's
    attributes, and the adjacency dicts that link them."""
    yield from _blocks(graph.graph, seen)
    for node, data in graph.nodes(data=True):
        yield from _blocks(node, seen)
        yield from _blocks(data, seen)
    for *_, data in graph.edges(data=True):
        yield from _blocks(data, seen)
    yield None, sys.getsizeof(dict(graph.nodes))
    for view in (graph.adj, *((graph.pred,) if graph.is_directed() else ())):
        yield None, sys.getsizeof(dict(view))
        for node in view:
            yield None, sys.getsizeof(dict(view[node]))  # a dict with as many entries as the node has neighbours
