"""Loaded models and runs, shared by every browser session of one app process.

Models are big and runs are immutable, so both are shared: two sessions with the same model get
the same object, and a model is loaded once even if two sessions ask at the same moment (the
second waits for the first). Each session keeps its own choices in ``st.session_state``.

Both caches are bounded by bytes, not by counts: runs by `Run.nbytes` (which grows as graphs
are built) within ``limits.run_cache_mb``, models by their parameter bytes within
``limits.model_cache_mb``; the least recently used entries go first, and the entry just used
always stays. A run points at its model, so evicting a model evicts its runs too: otherwise
they would keep it alive and its memory would never come back.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import streamlit as st
from cachetools import LRUCache

from llm_flow.config import Config, load_config
from llm_flow.models.base import TransparentLlm
from llm_flow.models.loading import load_model
from llm_flow.models.packaged import Progress
from llm_flow.models.run import Run
from llm_flow.models.seq2seq import Seq2SeqLlm
from llm_flow.models.seq2seq_run import Seq2SeqRun


@dataclass(frozen=True)
class ModelKey:
    source: str  # configured name, hub id, folder or .gguf path
    device: str
    dtype: str
    config_path: str  # short names and limits depend on the config file


class ByteBudgetCache:
    """A thread-safe LRU map bounded by the total size of its values (`cachetools.LRUCache`
    with `getsizeof`); each value is built at most once per key (a second caller waits for the
    first).

    Two things `LRUCache` alone does not do, done here: a value's size is measured when it is
    inserted, but runs grow afterwards (`Run.nbytes`), so every use measures all of them again
    by re-inserting them, oldest first, into a cache of the current limit (which also applies a
    limit changed in the config); and `LRUCache` refuses a value larger than the whole limit,
    while the entry just used must always stay: its size is counted as at most the limit, so it
    fits alone.
    """

    def __init__(self, size: Callable[[object], int], on_evict: Callable[[Hashable], None] | None = None) -> None:
        self._size = size
        self._on_evict = on_evict
        self._items = _Lru(0, size, on_evict)
        self._lock = threading.RLock()
        self._building: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, build: Callable[[], object], limit: int) -> object:
        """The value for `key`, built if missing; then evict down to `limit` bytes."""
        with self._lock:
            if key in self._items:
                value = self._items[key]  # now the most recently used
                self._refill(limit)
                return value
            key_lock = self._building.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            try:
                value = build()  # errors propagate; nothing is stored
            finally:
                with self._lock:
                    self._building.pop(key, None)
            with self._lock:
                self._refill(limit)
                self._items[key] = value
            return value

    def discard(self, keep: Callable[[Hashable], bool]) -> None:
        """Drop every entry whose key `keep` rejects."""
        with self._lock:
            for key in [k for k in self._items if not keep(k)]:
                del self._items[key]
                if self._on_evict is not None:
                    self._on_evict(key)

    def settle(self, limit: int) -> None:
        """Evict down to `limit` again: cached runs grow as routes are computed on them."""
        with self._lock:
            self._refill(limit)

    def nbytes(self) -> int:
        with self._lock:
            return sum(self._size(value) for value in self._items.values())

    def keys(self) -> list[Hashable]:
        """Least recently used first."""
        with self._lock:
            return [key for key, _ in self._items.oldest_first()]

    def clear(self) -> None:
        with self._lock:
            self.discard(lambda key: False)

    def _refill(self, limit: int) -> None:
        """Measure every value again: re-insert them, oldest first, into a cache of `limit`
        bytes, which evicts the least recently used until the rest fits."""
        entries = list(self._items.oldest_first())
        self._items = _Lru(limit, self._size, self._on_evict)
        for key, value in entries:
            self._items[key] = value


class _Lru(LRUCache):
    """`LRUCache` that reports evictions, lists its entries in LRU order, and counts a value
    larger than the whole limit as the limit (so the newest entry always fits)."""

    def __init__(self, limit: int, size: Callable[[object], int], on_evict: Callable[[Hashable], None] | None) -> None:
        super().__init__(limit, getsizeof=lambda value: min(size(value), limit))
        self._on_evict = on_evict

    def popitem(self) -> tuple[Hashable, object]:
        """What `LRUCache` calls to make room."""
        key, value = super().popitem()
        if self._on_evict is not None:
            self._on_evict(key)
        return key, value

    def oldest_first(self) -> list[tuple[Hashable, object]]:
        """Every entry, least recently used first (emptying a copy, without eviction reports)."""
        drained = copy.copy(self)
        return [LRUCache.popitem(drained) for _ in range(len(drained))]


def model_bytes(model: TransparentLlm) -> int:
    """Bytes of the model's parameters and buffers (what unloading it gives back)."""
    return model.parameter_bytes()


@st.cache_resource(show_spinner=False)
def _models() -> ByteBudgetCache:
    return ByteBudgetCache(model_bytes, on_evict=_forget_runs_of)


@st.cache_resource(show_spinner=False)
def _runs() -> ByteBudgetCache:
    return ByteBudgetCache(lambda run: run.nbytes)


def _forget_runs_of(model_key: Hashable) -> None:
    _runs().discard(lambda run_key: run_key[0] != model_key)


def get_model(key: ModelKey, progress: Progress | None = None, config: Config | None = None) -> TransparentLlm:
    """The shared model for `key`, loaded on first use. Limits come from the key's config file."""
    config = config if config is not None else load_config(key.config_path)

    def build() -> TransparentLlm:
        return load_model(key.source, device=key.device, dtype=key.dtype, config=config, progress=progress)

    return _models().get(key, build, config.model_cache_bytes)


#: The most target tokens an encoder–decoder writes greedily when the session gives no target.
GREEDY_TARGET_TOKENS = 128


def get_run(key: ModelKey, prompt: str, progress: Progress | None = None, *,
            target: str | tuple[int, ...] = "") -> Run | Seq2SeqRun:  # fmt: skip
    """The shared run of `prompt` on the model of `key`, computed on first use (and timed: see
    `token_pass_rate`). On an encoder–decoder `prompt` is the source and `target` the target:
    text, token ids as written on the Playground, or "" for the model's own greedy target; a
    decoder-only or encoder model ignores `target`."""
    config = load_config(key.config_path)
    model = get_model(key, progress, config)
    seq2seq = isinstance(model, Seq2SeqLlm)

    def timed() -> Run | Seq2SeqRun:
        started = time.perf_counter()
        run = _pair(model, prompt, target) if seq2seq else model.run(prompt)
        n_tokens = run.n_source + run.n_decoder if seq2seq else run.n_tokens
        _rates()[key] = n_tokens / max(time.perf_counter() - started, 1e-6)
        return run

    return _runs().get((key, prompt, target) if seq2seq else (key, prompt), timed, config.run_cache_bytes)


def _pair(model: Seq2SeqLlm, source: str, target: str | tuple[int, ...]) -> Seq2SeqRun:
    if isinstance(target, tuple):
        source_ids = model.encode(source)
        model.check_length(len(source_ids), "the source is", "shorten it")
        model.check_length(len(target) + 1, "the target is", "write a shorter one")
        return model.run_pair_ids(source_ids, list(target), source)
    return model.run_pair(source, target or None, max_new_tokens=target_room(model, GREEDY_TARGET_TOKENS))


def target_room(model: Seq2SeqLlm, wanted: int) -> int:
    """At most `wanted` target tokens, fewer when the decoder (its start token included) would
    pass the longest text the model may analyse."""
    return max(1, min(wanted, model.token_limit()[0] - 1))


def seq2seq_work(target: str | tuple[int, ...]) -> str:
    """What the analysis of an encoder–decoder pair is doing, for its progress message."""
    if target == "":
        return "Reading the source and writing the target (greedy)…"
    return "Reading the source and the target…"


def token_pass_rate(key: ModelKey) -> float | None:
    """Token positions per second of the latest forward pass on this model in this process:
    how the pages turn a request's cost in token passes into a time on this machine."""
    return _rates().get(key)


@st.cache_resource(show_spinner=False)
def _rates() -> dict[ModelKey, float]:
    return {}


def settle_caches(config: Config) -> None:
    """Back under the limits after a page has computed routes on its run (the app calls this
    at the end of every script run)."""
    _runs().settle(config.run_cache_bytes)


def cached_runs() -> ByteBudgetCache:
    """The process-wide run cache (for checks and diagnostics)."""
    return _runs()


def cached_models() -> ByteBudgetCache:
    """The process-wide model cache (for checks and diagnostics)."""
    return _models()
