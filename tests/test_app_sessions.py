"""Sessions side by side: what one browser session chooses or computes never shows in another,
even while both run at once (Streamlit runs each session's script in its own thread)."""

from __future__ import annotations

import threading

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


def test_two_sessions_running_at_once_keep_their_own_pages_and_analyses(tiny_config, monkeypatch):
    plans = {
        "one": ("The capital of France is", "attention", 0.02),
        "two": ("One, two, three,", "playground", 0.1),
    }
    seen, errors = {}, []
    barrier = threading.Barrier(len(plans))

    def session(name: str) -> None:
        prompt, page, threshold = plans[name]
        try:
            app = start(tiny_config, monkeypatch)
            barrier.wait(timeout=120)
            app.selectbox(key=widget_key("source.prompt_choice")).select(prompt).run()
            app.slider(key=widget_key("route.threshold")).set_value(threshold).run()
            for _ in range(3):
                goto(app, page)
                goto(app, "explorer")
            goto(app, page)
            captions = " ".join(c.value for c in app.caption)
            seen[name] = (state(app).source.active.prompt, state(app).route.threshold, captions, app.exception)
        except Exception as exc:  # reported below, with the session's name
            errors.append((name, exc))

    threads = [threading.Thread(target=session, args=(name,)) for name in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    for name, (prompt, _, threshold) in plans.items():
        shown_prompt, shown_threshold, captions, exceptions = seen[name]
        assert (shown_prompt, shown_threshold) == (prompt, threshold)
        assert not exceptions
    assert "Where each head looked" in seen["one"][2] and "can be drawn" not in seen["one"][2]  # the Attention page
    assert "can be drawn" in seen["two"][2] and "Where each head looked" not in seen["two"][2]  # the Playground
