"""Memory you can predict: what a Run holds, the estimate made before the forward pass, the
refusal when it would not fit, a real out-of-memory turned into a clear error, and the app's
caches bounded by bytes (with evicted models really released)."""

from __future__ import annotations

import dataclasses
import gc
import json
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest
import torch

import llm_flow
from llm_flow.config import load_config
from llm_flow.errors import MemoryLimitError
from benchmarks.memory import live_tensors
from llm_flow.models.memory import (
    estimate_peak_bytes,
    estimate_run_bytes,
    ffn_intermediates_bytes,
    out_of_memory_as_error,
)
from llm_flow.models.query_keys import QueryKeyPattern
from llm_flow.models.run import CausalPattern
from tests.conftest import REPO
from tests.tiny_models import FAMILIES, family_configs, tiny_tokenizer

SHORT = "The capital of France is"
LONG = "When Mary and John went to the store, John gave a drink to Mary. " * 3
MIB = 1 << 20


def held_bytes(run) -> int:
    """Written out field by field: numel x element size of every tensor the Run holds (no view
    shares storage with another in a fresh run), the pattern as the queries and keys it keeps
    (or its stored triangle); no logits."""
    total = run.tokens.numel() * run.tokens.element_size()
    for index, layer in enumerate(run.layers):
        for item in dataclasses.fields(layer):
            value = getattr(layer, item.name)
            if item.name == "resid_pre" and index > 0 and value is run.layers[index - 1].resid_post:
                continue  # a block's input is the previous block's output, kept once
            if isinstance(value, QueryKeyPattern):
                total += sum(t.numel() * t.element_size() for t in (value.queries, value.keys))
                continue
            if isinstance(value, CausalPattern):
                value = value.packed
            if value is not None:
                total += value.numel() * value.element_size()
    return total


@pytest.mark.parametrize("family", FAMILIES)
def test_run_nbytes_counts_everything_it_holds(tiny_models, family):
    run = tiny_models(family).run(LONG)
    assert all(run.layers[k].resid_pre is run.layers[k - 1].resid_post for k in range(1, run.n_layers))
    assert run.nbytes == held_bytes(run)
    llm_flow.build_graph(run, -1, 0.04)
    rows = [run.derived_store.peek(key) for key in run.derived_store.keys()]
    assert rows, "the graph kept its contribution rows"
    row_tensors = sum(row.heads.numel() * row.heads.element_size() for row in rows)
    assert run.nbytes - held_bytes(run) == run.derived_store.nbytes >= row_tensors


@pytest.mark.parametrize("family", FAMILIES)
def test_estimate_matches_measured_run_size(tiny_models, family):
    model = tiny_models(family)
    for prompt in (SHORT, LONG):
        run = model.run(prompt)
        assert estimate_run_bytes(model.info, run.n_tokens) == pytest.approx(run.nbytes, rel=0.2)


@pytest.mark.real_model
def test_estimate_matches_measured_run_size_on_smollm2(smollm2):
    sizes = []
    for prompt in (SHORT, LONG):
        run = smollm2.run(prompt)
        sizes.append(run.nbytes)
        assert estimate_run_bytes(smollm2.info, run.n_tokens) == pytest.approx(run.nbytes, rel=0.2)
    assert sizes[1] > 5 * sizes[0]


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "gpt_neox"])
def test_peak_estimate_holds_the_tensors_the_pass_has_alive_beyond_the_run(tiny_models, family):
    """The pass's own tensors, replayed from the torch profiler's allocation events (whatever the C
    allocator does with freed memory): at the end exactly the run; at the highest point the run
    plus one FFN's intermediates. GPT-2's GELU, elementwise arithmetic, holds 3.5 [T, d_mlp] at
    once; a gated FFN 1.7. Without the FFN term the estimate would fall short of that."""
    model = tiny_models(family)
    model.run(SHORT)  # lazy buffers, thread pools
    live = live_tensors(lambda: model.run(LONG))
    run = live.result
    assert live.end_bytes == run.nbytes
    beyond_run = live.peak_bytes - live.end_bytes
    term = ffn_intermediates_bytes(model.info, run.n_tokens)
    assert 0 < beyond_run <= term
    assert estimate_peak_bytes(model.info, run.n_tokens) >= live.peak_bytes
    if family == "gpt2":
        assert beyond_run >= 0.8 * term, "the FFN is what the pass holds at its highest"


def test_run_that_would_not_fit_is_refused_before_the_forward_pass(tiny_folders, tmp_path):
    folder = str(tiny_folders["llama"])
    probe = llm_flow.load_model(folder)
    n_tokens = len(probe.encode(LONG))
    exact = estimate_peak_bytes(probe.info, n_tokens)
    model = llm_flow.load_model(folder, max_run_bytes=exact - 1)
    calls = []
    model.bridge.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(MemoryLimitError) as error:
        model.run(LONG)
    message = str(error.value)
    assert f"analysing {n_tokens} tokens" in message and "KiB" in message
    assert "shorter prompt" in message or "prompt of at most" in message
    assert "smaller model" in message and "limits.run_memory_mb" in message
    assert calls == [], "refused before the model ran"
    assert model.run(SHORT).n_tokens < n_tokens, "a shorter prompt fits"
    assert llm_flow.load_model(folder, max_run_bytes=exact).run(LONG).n_tokens == n_tokens


def test_memory_limit_comes_from_the_config(tiny_folders, tmp_path):
    path = tmp_path / "local.json"
    path.write_text(json.dumps({
        "default_model": "tiny", "models": {"tiny": {"source": str(tiny_folders["gpt2"])}},
        "limits": {"run_memory_mb": 0.001, "run_cache_mb": 3, "model_cache_mb": 0.5},
    }))  # fmt: skip
    config = load_config(path)
    assert (config.max_run_bytes, config.run_cache_bytes, config.model_cache_bytes) == (1048, 3 * MIB, MIB // 2)
    with pytest.raises(MemoryLimitError, match="raise limits.run_memory_mb"):
        llm_flow.load_model("tiny", config=config).run(SHORT)
    path.write_text(json.dumps({"default_model": "tiny", "models": {"tiny": {"source": "x"}}}))
    defaults = load_config(path)
    assert defaults.max_run_bytes is None
    physical = Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]
    assert defaults.run_cache_bytes == pytest.approx(0.25 * int(physical) * 1024, rel=0.01)


def test_allocation_failures_become_memory_limit_errors(tiny_models):
    info = tiny_models("llama").info
    with pytest.raises(MemoryLimitError, match="out of memory while analysing 7 tokens") as error:
        with out_of_memory_as_error(info, 7):
            torch.empty(1 << 60, dtype=torch.uint8)  # a real allocation no machine can satisfy
    assert "shorter prompt" in str(error.value)
    with pytest.raises(MemoryLimitError):
        with out_of_memory_as_error(info, 7):
            bytearray(1 << 62)  # Python's own MemoryError
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        with out_of_memory_as_error(info, 7):  # other errors pass through unchanged
            torch.ones(2, 3) @ torch.ones(2, 3)


OOM_CHILD = """
import json, resource, sys
import llm_flow
from llm_flow.errors import MemoryLimitError

model = llm_flow.load_model(sys.argv[1], max_prompt_tokens=100_000, max_run_bytes=1 << 50)
model.run("warm up the thread pools")
words = "two " * 2700  # about 8100 tokens
vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
try:
    model.run(words)
except MemoryLimitError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
else:
    print(json.dumps({"error": None}))
"""


def test_out_of_memory_during_a_run_is_a_clear_error(tmp_path):
    """A real out-of-memory inside the forward pass: a child process whose address space leaves
    256 MiB to spare runs an 8k-token prompt through FFNs 8,192 wide (one FFN hidden layer alone
    is 253 MiB; attention, on SDPA, never makes a [T, T] tensor)."""
    tokenizer = tiny_tokenizer()
    model_class, config = family_configs(len(tokenizer))["llama"]
    config.max_position_embeddings = 16384
    config.intermediate_size = 8192
    folder = tmp_path / "long-llama"
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(OOM_CHILD), str(folder)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["error"] == "MemoryLimitError", result
    assert "out of memory while analysing" in result["message"] and "shorter prompt" in result["message"]
    assert "an allocation of" in result["message"] and "MiB failed" in result["message"]


# --- the app's caches -------------------------------------------------------------------------


def cache_config(tiny_folders, tmp_path, **limits) -> Path:
    path = tmp_path / "local.json"
    models = {f"tiny-{family}": {"source": str(tiny_folders[family])} for family in ("llama", "gpt2")}
    path.write_text(json.dumps({"default_model": "tiny-llama", "models": models, "limits": limits}))
    return path


@pytest.fixture
def resources():
    """The app's process-wide caches, emptied before and after the test."""
    from llm_flow.ui import resources

    resources._models.clear()
    resources._runs.clear()
    yield resources
    resources._models.clear()
    resources._runs.clear()


def test_run_cache_stays_under_its_byte_limit(resources, tiny_folders, tmp_path):
    one_run = llm_flow.load_model(str(tiny_folders["llama"])).run(LONG).nbytes
    limit_mb = 3.5 * one_run / MIB
    path = cache_config(tiny_folders, tmp_path, run_cache_mb=limit_mb)
    limit = load_config(path).run_cache_bytes
    key = resources.ModelKey("tiny-llama", "cpu", "float32", str(path))
    prompts = [f"{LONG} Prompt number {i}." for i in range(8)]
    kept_counts = []
    for prompt in prompts:
        run = resources.get_run(key, prompt)
        llm_flow.build_graph(run, -1, 0.02)  # memoised rows make the run grow after it was cached
        resources.get_run(key, prompt)  # the next use re-measures and evicts
        cached = resources.cached_runs()
        kept = [p for (_, p) in cached.keys()]
        kept_counts.append(len(kept))
        assert cached.nbytes() <= limit
        assert kept[-1] == prompt, "the run just used stays"
        assert kept == [p for p in prompts if p in kept], "least recently used go first"
    assert max(kept_counts) >= 2 and kept_counts[-1] < len(prompts)
    first_again = resources.get_run(key, prompts[0])
    assert first_again.nbytes < limit and resources.cached_runs().keys()[-1] == (key, prompts[0])


def test_run_cache_sees_a_cached_run_grow_and_settles_under_its_limit(resources, tiny_folders, tmp_path):
    """All positions' contributions make a cached run several times larger: the cache's total
    grows by exactly that, and settling evicts older runs until it is back under the limit."""
    prompts = [f"{LONG} Prompt number {i}." for i in range(3)]
    probe = llm_flow.load_model(str(tiny_folders["llama"])).run(prompts[0])
    fresh = probe.nbytes
    llm_flow.full_contributions(probe)
    grown = probe.nbytes
    # room for three fresh runs, or for a grown one and a fresh one, but not a grown one and two fresh
    limit = (max(3 * fresh, grown + fresh) + grown + 2 * fresh) / 2
    assert max(3 * fresh, grown + fresh) < limit < grown + 2 * fresh
    path = cache_config(tiny_folders, tmp_path, run_cache_mb=limit / MIB)
    config = load_config(path)
    key = resources.ModelKey("tiny-llama", "cpu", "float32", str(path))
    runs = [resources.get_run(key, prompt) for prompt in prompts]  # three fresh runs fit
    cache = resources.cached_runs()
    before = cache.nbytes()
    assert len(cache.keys()) == 3
    llm_flow.full_contributions(runs[-1])
    assert cache.nbytes() - before == runs[-1].nbytes - fresh > 0, "the cache sees the growth"
    assert cache.nbytes() > config.run_cache_bytes
    resources.settle_caches(config)
    assert cache.nbytes() <= config.run_cache_bytes
    assert [p for _, p in cache.keys()] == prompts[1:], "the oldest went, the grown one stays"


def test_evicted_model_is_released_with_its_runs(resources, tiny_folders, tmp_path):
    path = cache_config(tiny_folders, tmp_path, model_cache_mb=0.001)  # room for the newest model only
    llama = resources.ModelKey("tiny-llama", "cpu", "float32", str(path))
    gpt2 = resources.ModelKey("tiny-gpt2", "cpu", "float32", str(path))
    model = resources.get_model(llama)
    run = resources.get_run(llama, SHORT)
    alive = weakref.ref(model)
    assert resources.get_model(llama) is model, "shared while cached"
    del model, run
    gc.collect()
    assert alive() is not None, "the cache keeps it while it fits"
    resources.get_run(gpt2, SHORT)
    assert resources.cached_models().keys() == [gpt2]
    assert all(k[0] == gpt2 for k in resources.cached_runs().keys()), "its runs went with it"
    gc.collect()
    assert alive() is None, "nothing keeps the evicted model alive"


@pytest.mark.parametrize("family", ["bert", "mixtral"])
def test_estimate_matches_measured_run_size_of_encoders_and_experts(family):
    from tests.tiny_models import build_model

    hf_model, tokenizer = build_model(family)
    model = llm_flow.load_model(hf_model, tokenizer=tokenizer)
    for prompt in (SHORT, LONG):
        run = model.run(prompt)  # full [H, T, T] patterns, post-LN gains, active expert neurons
        assert estimate_run_bytes(model.info, run.n_tokens) == pytest.approx(run.nbytes, rel=0.02)


class Sized:
    """A cache value whose size the test sets, and may change after it was cached (as a Run's)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


def test_byte_budget_cache_keeps_the_newest_and_sees_values_grow():
    from llm_flow.ui.resources import ByteBudgetCache

    evicted = []
    cache = ByteBudgetCache(lambda value: value.nbytes, on_evict=evicted.append)
    a, b, c = Sized(30), Sized(30), Sized(30)
    for key, value in (("a", a), ("b", b), ("c", c)):
        assert cache.get(key, lambda value=value: value, 100) is value
    assert cache.keys() == ["a", "b", "c"] and cache.nbytes() == 90 and evicted == []
    assert cache.get("a", lambda: pytest.fail("built again"), 100) is a
    assert cache.keys() == ["b", "c", "a"], "a use makes it the most recent"
    c.nbytes = 60  # grew after it was cached
    cache.settle(100)
    assert cache.keys() == ["c", "a"] and evicted == ["b"], "the growth is seen; the least recent goes"
    huge = Sized(500)
    assert cache.get("huge", lambda: huge, 100) is huge
    assert cache.keys() == ["huge"] and evicted == ["b", "c", "a"], "a value over the limit stays, alone"
    cache.get("a", lambda: a, 100)
    assert cache.keys() == ["a"] and evicted[-1] == "huge"
    cache.get("b", lambda: b, 40)  # a smaller limit from another config applies at once
    assert cache.keys() == ["b"] and evicted[-1] == "a"
    cache.discard(lambda key: key != "b")
    assert cache.keys() == [] and evicted[-1] == "b"


def test_byte_budget_cache_builds_a_missing_value_once_for_concurrent_callers():
    import threading

    from llm_flow.ui.resources import ByteBudgetCache

    cache = ByteBudgetCache(lambda value: value.nbytes)
    builds, results = [], []
    release = threading.Event()

    def build():
        builds.append(1)
        release.wait(5)
        return Sized(10)

    threads = [threading.Thread(target=lambda: results.append(cache.get("k", build, 100))) for _ in range(4)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and len(results) == 4 and all(r is results[0] for r in results)

