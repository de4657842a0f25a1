"""Sessions side by side: what one browser session chooses or computes never shows in another.
Two sessions running at once, each in its own thread as Streamlit runs them, are driven in real
browsers (tests/test_browser_state.py): AppTest itself is not safe to run from two threads (its
record of widgets' format functions is shared)."""

from __future__ import annotations

from tests.app_helpers import goto, start, state, widget_key


def check_expander(app):
    return next(e for e in app.expander if "Check this route" in (e.label or ""))


def result_tables(app):
    return [df for df in app.dataframe if "condition" in df.value.columns]


def test_a_new_session_does_not_open_on_another_sessions_route_check(tiny_config, monkeypatch):
    first = start(tiny_config, monkeypatch)
    first.number_input(key=widget_key("check.draws")).set_value(2).run()
    next(b for b in first.button if b.label == "Check this route").click().run()
    assert result_tables(first) and check_expander(first).proto.expanded

    second = start(tiny_config, monkeypatch)
    second.number_input(key=widget_key("check.draws")).set_value(2).run()  # the very settings the first checked
    assert not check_expander(second).proto.expanded
    assert not result_tables(second), "the other session's result is not shown here"
    assert state(second).check.shown is False and "check" not in dict(second.query_params)
