"""Driving the app with Streamlit's AppTest: start it on a config (optionally from a link), move
between pages as the top menu does, and reach the very Run a session shows."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest
from streamlit.util import calc_hash

from llm_flow.ui.resources import get_run
from llm_flow.ui.state import STATE_KEY, SessionState, widget_key
from tests.conftest import REPO

TIMEOUT = 300


def start(config_path, monkeypatch, params: dict[str, str] | None = None) -> AppTest:
    """A new browser session on `config_path`, opened on a link with `params` if given."""
    monkeypatch.setenv("LLM_FLOW_CONFIG", str(config_path))
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    for name, value in (params or {}).items():
        app.query_params[name] = value
    app.run()
    assert not app.exception, [e.message for e in app.exception]
    return app


def goto(app: AppTest, url_path: str) -> AppTest:
    """Open another page, as a click in the top menu does. `st.Page` objects are known by the
    hash of their url path; AppTest's own `switch_page` only knows file-based pages."""
    app._page_hash = calc_hash(url_path)
    app.run()
    assert not app.exception, [e.message for e in app.exception]
    return app


def active_run(app: AppTest):
    """The very Run the app is showing (from the shared registry, not a new forward pass)."""
    request = state(app).source.active
    return get_run(request.model, request.prompt, target=request.target)


def state(app: AppTest) -> SessionState:
    """The session's state object (every setting of every page)."""
    return app.session_state[STATE_KEY]


def record_downloads(monkeypatch) -> dict[str, tuple[str, object]]:
    """Watch Streamlit register the files of download buttons built on click: element id ->
    (file name, the callable that makes the file). Streamlit's own registration still runs."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    seen: dict[str, tuple[str, object]] = {}
    real = MediaFileManager.add_deferred

    def add_deferred(self, data_callable, mimetype, coordinates, file_name=None, *, element_id=""):
        seen[element_id] = (file_name, data_callable)
        return real(self, data_callable, mimetype, coordinates, file_name, element_id=element_id)

    monkeypatch.setattr(MediaFileManager, "add_deferred", add_deferred)
    return seen


def download_files(app: AppTest, seen: dict[str, tuple[str, object]]) -> dict[str, tuple[str, object]]:
    """The download buttons on screen: label -> (file name, file maker)."""
    return {button.label: seen[button.id] for button in app.download_button}
