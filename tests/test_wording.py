"""How the app words counts and waiting times."""

from __future__ import annotations

import pytest

from llm_flow.wording import plural, probability, sentence, shortened, step_progress


def test_sentence_and_plural():
    assert sentence("the prompt is empty") == "The prompt is empty."
    assert sentence("Done!") == "Done!"
    assert plural(1, "token") == "1 token" and plural(1200, "token") == "1,200 tokens"


@pytest.mark.parametrize("p, expected", [
    (0.7725, "77.25%"), (1.0, "100.00%"), (0.01, "1.00%"),
    (0.0099, "9.90e-03"), (6.85e-09, "6.85e-09"), (0.0, "0"),  # small values keep three digits
])  # fmt: skip
def test_probability_keeps_small_values(p, expected):
    assert probability(p) == expected
    if p:
        assert float(expected.rstrip("%")) / (100 if expected.endswith("%") else 1) == pytest.approx(p, rel=5e-3)


@pytest.mark.parametrize("done, total, elapsed, left", [
    (1, 5, 10.0, "00:40"),  # 4 more steps of 10 s
    (2, 5, 10.0, "00:15"),
    (1, 6, 60.0, "05:00"),  # 300 s
    (1, 3, 1800.0, "1:00:00"),
])  # fmt: skip
def test_step_progress_extrapolates_the_steps_done(done, total, elapsed, left):
    assert step_progress("Saliency", done, total, elapsed) == f"Saliency: step {done} of {total}, {left} left"


def test_shortened_keeps_start_and_end_within_the_limit():
    assert shortened("short prompt") == "short prompt"
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    cut = shortened(text, 50)
    assert len(cut) == 50 and "…" in cut
    start, end = cut.split("…")
    assert text.startswith(start) and text.endswith(end) and len(start) < len(end)


def test_step_progress_says_no_time_before_the_first_step_or_after_the_last():
    assert step_progress("Saliency", 0, 5, 3.0) == "Saliency: step 0 of 5"
    assert step_progress("Saliency", 5, 5, 50.0) == "Saliency: step 5 of 5"


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(0.2, "about 1 s"), (40.4, "about 40 s"), (89, "about 89 s"), (95, "about 2 min"), (720, "about 12 min"),
     (5340, "about 89 min"), (5400, "about 1 h 30 min"), (11_400, "about 3 h 10 min"), (7_200, "about 2 h")],
)
def test_a_duration_is_rounded_as_an_estimate_deserves(seconds, said):
    from llm_flow.wording import duration

    assert duration(seconds) == said
