"""Analyses in worker threads (`llm_flow.ui.jobs`) and the model's per-layer report they follow:
one job per request however many sessions ask, progress layer by layer, a cancel that stops the
forward pass at its next layer only when every asker withdrew, and errors handed back."""

from __future__ import annotations

import threading

import pytest

from llm_flow.errors import PromptError
from llm_flow.ui.jobs import Cancelled, Jobs

PROMPT = "The capital of France is Paris. When Mary and John went to the store"


def test_the_model_reports_each_layer_of_this_threads_passes_only(tiny_models):
    model = tiny_models("llama")
    seen, elsewhere = [], []
    with model.layer_progress(lambda done, total: seen.append((done, total))):
        other = threading.Thread(target=lambda: elsewhere.append(model.run("another prompt")))
        other.start()
        other.join()
        model.run(PROMPT)
    n = model.info.n_layers
    assert seen == [(layer, n) for layer in range(1, n + 1)]  # the other thread's pass is not in it
    assert elsewhere and elsewhere[0].n_tokens > 0
    model.run(PROMPT)  # outside the block: no report, no error
    assert len(seen) == n


def test_an_exception_from_the_report_ends_the_pass_and_frees_the_model(tiny_models):
    model = tiny_models("gpt2")

    def stop_at_second(done: int, total: int) -> None:
        if done == 2:
            raise Cancelled("stop")

    with pytest.raises(Cancelled), model.layer_progress(stop_at_second):
        model.run(PROMPT)
    assert not model.lock.locked()
    assert model.run(PROMPT).n_tokens > 0


def _blocking_work(release: threading.Event, calls: list[int]):
    def work(job):
        calls.append(1)
        release.wait(30)
        return "result"

    return work


def test_sessions_asking_for_the_same_analysis_share_one_job():
    jobs, release, calls = Jobs(), threading.Event(), []
    first = jobs.watch("request", "session-a", _blocking_work(release, calls))
    second = jobs.watch("request", "session-b", _blocking_work(release, calls))
    assert first is second and jobs.running("request") is first
    release.set()
    assert first.finished.wait(30) and first.outcome() == "result" and calls == [1]
    assert jobs.running("request") is None  # a finished job leaves the table


def test_a_job_is_cancelled_only_when_every_asker_withdrew(tiny_models):
    model = tiny_models("llama")
    jobs, go = Jobs(), threading.Event()

    def work(job):
        go.wait(30)
        with model.layer_progress(lambda done, total: job.layer_done(done, total, "Forward pass")):
            return model.run(PROMPT)

    job = jobs.watch("request", "a", work)
    jobs.watch("request", "b", work)
    jobs.withdraw("request", "a")
    assert not job.cancelled.is_set()  # b still waits for it
    jobs.withdraw("request", "b")
    go.set()
    assert job.finished.wait(60)
    with pytest.raises(Cancelled):
        job.outcome()
    assert model.run(PROMPT).n_tokens > 0


def test_progress_says_which_layer_and_errors_come_back_to_the_caller(tiny_models):
    model = tiny_models("qwen2")
    jobs, messages = Jobs(), []

    def work(job):
        def report(done, total):
            job.layer_done(done, total, "Forward pass over 14 tokens")
            messages.append(job.message)

        with model.layer_progress(report):
            return model.run(PROMPT)

    job = jobs.watch("good", "a", work)
    assert job.finished.wait(60) and job.outcome().n_tokens > 0
    n = model.info.n_layers
    assert messages[-1] == f"Forward pass over 14 tokens: layer {n} of {n}"  # nothing left to estimate
    assert messages[0].startswith("Forward pass over 14 tokens: layer 1 of ")

    failing = jobs.watch("bad", "a", lambda job: model.run(""))
    assert failing.finished.wait(60)
    with pytest.raises(PromptError):
        failing.outcome()
