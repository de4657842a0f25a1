"""Loaded models and runs, shared by every browser session of one app process.

Models are big and runs are immutable, so both are shared: two sessions with the same model get
the same object, and a model is loaded once even if two sessions ask at the same moment (the
second waits for the first). Each session keeps its own choices in ``st.session_state``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

from llm_flow.config import load_config
from llm_flow.models.base import TransparentLlm
from llm_flow.models.loading import load_model
from llm_flow.models.packaged import Progress
from llm_flow.models.run import Run


@dataclass(frozen=True)
class ModelKey:
    source: str  # configured name, hub id, folder or .gguf path
    device: str
    dtype: str
    config_path: str  # short names and limits depend on the config file


class _LruRegistry:
    """A small thread-safe LRU map whose values are built at most once per key."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[object, object] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[object, threading.Lock] = {}

    def get(self, key: object, build: Callable[[], object]) -> object:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._building.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            value = build()  # errors propagate; nothing is stored
            with self._lock:
                self._items[key] = value
                self._building.pop(key, None)
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
            return value


@st.cache_resource(show_spinner=False)
def _models() -> _LruRegistry:
    return _LruRegistry(capacity=2)


@st.cache_resource(show_spinner=False)
def _runs() -> _LruRegistry:
    return _LruRegistry(capacity=16)


def get_model(key: ModelKey, progress: Progress | None = None) -> TransparentLlm:
    def build() -> TransparentLlm:
        config = load_config(key.config_path)
        return load_model(key.source, device=key.device, dtype=key.dtype, config=config, progress=progress)

    return _models().get(key, build)


def get_run(key: ModelKey, prompt: str, progress: Progress | None = None) -> Run:
    model = get_model(key, progress)
    return _runs().get((key, prompt), lambda: model.run(prompt))
