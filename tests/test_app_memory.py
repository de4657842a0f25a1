"""The app under memory pressure: a run that would not fit, one that runs out of memory, and a
burst of sessions against byte-bounded caches."""

from __future__ import annotations

import gc
import json
import weakref

import pytest

from llm_flow.config import load_config
from llm_flow.models.memory import estimate_peak_bytes
from llm_flow.ui.resources import cached_models, cached_runs
from tests.app_helpers import active_run, start, state, widget_key


def config_with(tiny_config, tmp_path, **limits):
    config = json.loads(tiny_config.read_text())
    config["limits"].update(limits)
    config["prompts_file"] = str(tiny_config.parent / "prompts.json")
    path = tmp_path / "limited.json"
    path.write_text(json.dumps(config))
    return path


def analyse(app, text: str) -> None:
    app.text_area(key=widget_key("source.new_prompt")).input(text)
    next(b for b in app.button if b.label == "Analyse new prompt").click().run()


@pytest.fixture
def fresh_caches():
    cached_runs().clear()
    cached_models().clear()
    yield
    cached_runs().clear()
    cached_models().clear()


def test_a_prompt_that_would_not_fit_is_refused_with_the_estimate_and_the_view_stays(tiny_config, tmp_path, monkeypatch, fresh_caches):
    app = start(tiny_config, monkeypatch)
    run = active_run(app)
    text = "One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve"
    short, long = run.n_tokens, len(run.model.encode(text))  # the limit lies between their estimated peaks
    limit_mb = (estimate_peak_bytes(run.model.info, short) + estimate_peak_bytes(run.model.info, long)) / 2 / 2**20
    app = start(config_with(tiny_config, tmp_path, run_memory_mb=limit_mb), monkeypatch)
    before = state(app).source.active
    analyse(app, text)
    message = next(e.value for e in app.error)
    assert "needs about" in message and "run_memory_mb" in message, message
    assert state(app).source.active == before and "nodes" in " ".join(c.value for c in app.caption)
    assert app.text_area(key=widget_key("source.new_prompt")).value == text, "what the user typed is kept"


def test_running_out_of_memory_during_a_run_is_a_message_not_retried_and_the_view_stays(tiny_config, monkeypatch, fresh_caches):
    app = start(tiny_config, monkeypatch)
    model = active_run(app).model
    attempts = []

    def exhausted(module, args):  # a real forward hook on the real model, failing as the allocator does
        attempts.append(1)
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:116] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 68719476736 bytes")  # fmt: skip

    handle = model.hf_model.register_forward_pre_hook(exhausted)
    try:
        before = state(app).source.active
        analyse(app, "Seven, eight, nine, ten")
        message = next(e.value for e in app.error)
        assert "memory" in message.lower() and "Traceback" not in message, message
        assert state(app).source.active == before
        app.slider(key=widget_key("route.threshold")).set_value(0.1).run()  # any other interaction
        assert len(attempts) == 1, "the failed run is not retried on every rerun"
        assert "nodes" in " ".join(c.value for c in app.caption), "the previous analysis is usable"
    finally:
        handle.remove()


def test_after_a_burst_of_sessions_the_caches_are_back_under_their_limit(tiny_config, tmp_path, monkeypatch, fresh_caches):
    """Six sessions analysing different prompts: the shared run cache never holds more than its
    limit, and runs it dropped are freed (no session keeps one alive)."""
    prompts = [f"One, two, three, four, five{', six' * n}" for n in range(6)]
    probe = start(tiny_config, monkeypatch)
    analyse(probe, prompts[-1])
    largest = active_run(probe).nbytes  # the longest prompt, with its route's rows computed
    limit_mb = 2.5 * largest / 2**20  # room for two or three runs
    path = config_with(tiny_config, tmp_path, run_cache_mb=limit_mb)
    cached_runs().clear()
    limit = load_config(path).run_cache_bytes
    runs = []
    sessions = []
    for prompt in prompts:
        app = start(path, monkeypatch)
        analyse(app, prompt)
        assert not app.error
        runs.append(weakref.ref(active_run(app)))
        sessions.append(app)
        assert cached_runs().nbytes() <= limit, [(k[1], cached_runs()._items[k].nbytes) for k in cached_runs().keys()]
    gc.collect()
    alive = [r for r in runs if r() is not None]
    assert cached_runs().nbytes() <= limit
    assert len(alive) <= len(cached_runs().keys()) < 6, "evicted runs are freed even though their sessions live on"
    for app in sessions:  # every session still works: its run is rebuilt when it is needed again
        app.slider(key=widget_key("route.threshold")).set_value(0.1).run()
        assert not app.exception and "nodes" in " ".join(c.value for c in app.caption)
        assert cached_runs().nbytes() <= limit, [(k[1], cached_runs()._items[k].nbytes) for k in cached_runs().keys()]
