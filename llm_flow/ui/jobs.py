"""Analyses that run beside the sessions' scripts, so a long forward pass never holds a page.

A session asking for a model and prompt starts a job (or joins the one already running for the
same request: two sessions never compute the same run twice) and watches it: each script run
waits on it while drawing its progress, so a click elsewhere (another page, another prompt) is
answered at once — Streamlit stops the script at its next progress update — while the job goes
on; coming back picks the same job up where it is. A job is cancelled only when every session
that asked for it has withdrawn; the model stops at its next layer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import streamlit as st

from llm_flow.errors import LlmFlowError
from llm_flow.wording import step_progress


class Cancelled(LlmFlowError):
    """Every session that asked for the analysis withdrew it."""


@dataclass
class Job:
    """One analysis in a worker thread: what it says now, and its outcome once finished."""

    message: str = "Starting…"
    result: object = None
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    askers: set[str] = field(default_factory=set)  # sessions still waiting for it
    cancelled: threading.Event = field(default_factory=threading.Event)
    _started: float = field(default_factory=time.perf_counter)

    def say(self, message: str) -> None:
        """A progress message (loading, converting, downloading)."""
        self.message = message

    def layer_done(self, done: int, total: int, label: str) -> None:
        """The model's per-layer report: the message, and the point where a cancelled job stops."""
        if self.cancelled.is_set():
            raise Cancelled("the analysis was cancelled")
        self.message = step_progress(label, done, total, time.perf_counter() - self._started, unit="layer")

    def outcome(self) -> object:
        """The result, or the job's exception raised again in the caller's thread."""
        if self.error is not None:
            raise self.error
        return self.result


class Jobs:
    """The process-wide table of running jobs, one per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Hashable, Job] = {}

    def watch(self, key: Hashable, asker: str, work: Callable[[Job], object]) -> Job:
        """The job for `key`, started with `work(job)` in a new thread unless one is running."""
        with self._lock:
            job = self._running.get(key)
            if job is None:
                job = self._running[key] = Job()
                threading.Thread(target=self._work, args=(key, job, work), name=f"llm-flow job {key}", daemon=True).start()
            job.askers.add(asker)
            return job

    def withdraw(self, key: Hashable, asker: str) -> None:
        """`asker` no longer waits for `key`; the job is cancelled if nobody else does."""
        with self._lock:
            job = self._running.get(key)
            if job is None:
                return
            job.askers.discard(asker)
            if not job.askers:
                job.cancelled.set()

    def running(self, key: Hashable) -> Job | None:
        with self._lock:
            return self._running.get(key)

    def _work(self, key: Hashable, job: Job, work: Callable[[Job], object]) -> None:
        try:
            job.result = work(job)
        except BaseException as exc:  # handed to every waiting session, which shows it
            job.error = exc
        finally:
            with self._lock:
                self._running.pop(key, None)
            job.finished.set()


@st.cache_resource(show_spinner=False)
def jobs() -> Jobs:
    return Jobs()
