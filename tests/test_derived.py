"""One store of derived results per Run: what it counts, what it keeps, and two threads at once.

Sizes are checked against numbers written out by hand (numel x element size, numpy's own
`nbytes`, pandas' own deep memory usage), never against the store's own arithmetic."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import ClassVar

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch

import llm_flow
from llm_flow.errors import ArgumentError
from llm_flow.models.derived import DerivedStore, nbytes_of
from llm_flow.routes.contributions import AllPositions
from llm_flow.routes.graph import shared_graph
from llm_flow.views.attention_scores import query_keys
from tests.conftest import PROMPT
from tests.tiny_models import FAMILIES


@dataclass(frozen=True)
class Square:
    n: int


@dataclass(frozen=True)
class Figure:
    keep: ClassVar[int] = 2
    n: int


@dataclass(frozen=True)
class Pair:
    first: torch.Tensor
    second: torch.Tensor


def test_sizes_of_tensors_arrays_tables_and_graphs():
    block = torch.zeros(10, 20)  # 800 bytes
    assert nbytes_of(block) == 800
    assert nbytes_of(block[3:5]) == 800, "a view holds its whole storage"
    assert nbytes_of((block[0], block[1], block)) == 800 + sys.getsizeof((1, 2, 3)), "one storage, counted once"
    assert nbytes_of(Pair(block, torch.ones(5, dtype=torch.float64))) == 800 + 40 + sys.getsizeof(Pair(block, block))
    array = np.zeros((4, 25))  # 800 bytes of float64
    assert nbytes_of(array[1:2]) == 800 and nbytes_of([array, array.T]) == 800 + sys.getsizeof([1, 2])
    table = pd.DataFrame({"token": ["a", "bb"], "p": [0.5, 0.25]})
    assert nbytes_of(table) == table.memory_usage(deep=True, index=True).sum()
    small, large = nx.DiGraph(), nx.DiGraph()
    small.add_edge("A0_1", "I0_1", weight=0.5)
    for k in range(50):
        large.add_edge(f"A0_{k}", f"I0_{k}", weight=0.5, heads=[0.1] * 8)
    assert 0 < nbytes_of(small) < nbytes_of(large)
    assert nbytes_of(large) > 50 * sys.getsizeof([0.1] * 8), "edge attributes are counted"


def test_store_keeps_the_first_value_and_counts_it():
    store = DerivedStore()
    calls = []
    first = store.get(Square(3), lambda: calls.append(1) or torch.zeros(3))
    assert store.get(Square(3), lambda: pytest.fail("computed again")) is first
    assert store.put(Square(3), torch.ones(3)) is first, "the first value stays"
    assert store.nbytes == 12 and calls == [1]
    with pytest.raises(RuntimeError):
        store.get(Square(4), lambda: (_ for _ in ()).throw(RuntimeError("refused")))
    assert store.peek(Square(4)) is None and store.keys() == [Square(3)], "a failed computation stores nothing"


@pytest.mark.parametrize("key", [(1, 2), "rows", Square, {"layer": 1}])
def test_keys_say_what_was_computed(key):
    """Keys are frozen dataclasses: an ad-hoc tuple or string could collide with another kind."""
    with pytest.raises(ArgumentError, match="frozen dataclass"):
        DerivedStore().get(key, lambda: 1)


def test_kinds_with_a_bound_keep_the_most_recently_used():
    store = DerivedStore()
    for n in range(3):
        store.get(Figure(n), lambda: torch.zeros(100))  # 400 bytes each
    store.get(Square(0), lambda: torch.zeros(10))
    assert set(store.keys()) == {Figure(1), Figure(2), Square(0)} and store.nbytes == 2 * 400 + 40
    store.peek(Figure(1))  # now Figure(2) is the least recently used
    store.get(Figure(3), lambda: torch.zeros(100))
    assert set(store.keys()) == {Figure(1), Figure(3), Square(0)} and store.nbytes == 2 * 400 + 40


def test_shared_storage_is_counted_once_and_released_with_its_last_holder():
    store = DerivedStore()
    table = torch.zeros(8, 8)  # 256 bytes
    store.put(Square(0), table)
    store.put(Square(1), table[2])
    assert store.nbytes == 256
    store.clear(Square)
    assert store.nbytes == 0 and not store.keys()


def test_two_threads_computing_one_key_leave_one_value():
    """Computing twice is allowed; storing twice is not: every caller gets the same object and
    the bytes are those of one value."""
    store = DerivedStore()
    start = threading.Barrier(4)
    results = []

    def compute():
        start.wait()  # all four are computing at the same moment
        return torch.zeros(1000)

    threads = [threading.Thread(target=lambda: results.append(store.get(Square(1), compute))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(r is results[0] for r in results)
    assert store.nbytes == 4000 and store.keys() == [Square(1)]


def test_many_threads_many_keys_lose_nothing():
    store = DerivedStore()

    def work(offset):
        for n in range(200):
            store.get(Square((n * 7 + offset) % 200), lambda: torch.zeros(10))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(k.n for k in store.keys()) == list(range(200)) and store.nbytes == 200 * 40


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_all_positions_grow_the_run_by_exactly_their_size(tiny_models, family):
    run = tiny_models(family).run(PROMPT)
    before = run.nbytes
    table = llm_flow.full_contributions(run)
    info, n = run.model.info, run.n_tokens
    # per layer: heads [T, T, H] and the residual, FFN and FFN-residual shares [T] (parallel
    # blocks: the FFN-residual share is the residual share, one tensor), float32
    vectors = 2 if run.parallel else 3
    expected = sum(4 * (n * n * info.n_heads + vectors * n) + sys.getsizeof(layer) for layer in table)
    assert run.nbytes - before == expected
    assert all(run.derived_store.peek(AllPositions(k)) is layer for k, layer in enumerate(table))
    llm_flow.full_contributions(run)
    assert run.nbytes - before == expected, "a second call keeps nothing new"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_derived_result_is_counted(tiny_models, family):
    """Queries and keys of the neuron view and a page's route graph are kept with the Run and
    grow its bytes, by at least their tensors."""
    run = tiny_models(family).run(PROMPT)
    before = run.nbytes
    qk = query_keys(run, 1)
    assert query_keys(run, 1) is qk
    tensors = qk.queries.numel() * 4 + qk.keys.numel() * 4
    assert run.nbytes - before >= tensors
    grown = run.nbytes
    graph = shared_graph(run, -1, 0.04, True)
    assert shared_graph(run, run.n_tokens - 1, 0.04, True) is graph, "negative and positive targets are one route"
    assert run.nbytes - grown >= nbytes_of(graph) > 0
