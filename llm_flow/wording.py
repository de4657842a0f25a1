"""How the app words what it tells people: messages start with a capital and end with a full
stop, counts agree with their noun."""

from __future__ import annotations


def sentence(message: str) -> str:
    """``"the prompt is empty: type…"`` -> ``"The prompt is empty: type…."``."""
    message = message.strip()
    if not message:
        return message
    message = message[0].upper() + message[1:]
    return message if message.endswith((".", "!", "?")) else f"{message}."


def plural(count: int, noun: str) -> str:
    """``plural(1, "token") == "1 token"``, ``plural(3, "token") == "3 tokens"``."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def step_progress(label: str, done: int, total: int, elapsed: float) -> str:
    """``"Saliency: step 2 of 5, about 40 s left"``: what the page's progress bar and the CLI
    say after each step of a long computation."""
    left = time_left(done, total, elapsed)
    return f"{label}: step {done} of {total}" + (f", {left}" if left else "")


def time_left(done: int, total: int, elapsed: float) -> str:
    """What a progress bar adds after `done` of `total` equal steps took `elapsed` seconds:
    ``"about 40 s left"``, ``"about 3 min left"``; nothing before the first step is done."""
    if done <= 0 or done >= total:
        return ""
    seconds = elapsed / done * (total - done)
    if seconds < 90:
        return f"about {max(1, round(seconds))} s left"
    return f"about {round(seconds / 60)} min left"


def shortened(text: str, limit: int = 200) -> str:
    """`text` cut in the middle to at most `limit` characters, keeping its start and its end
    (where the next token is predicted): a long prompt must not push a page's controls away."""
    if len(text) <= limit:
        return text
    head = (limit - 1) * 2 // 5
    return f"{text[:head]}…{text[len(text) - (limit - 1 - head):]}"


def block_kind(info) -> str:
    """How a model's blocks are built (`info` a ModelInfo), for the model panel."""
    if info.bidirectional:
        head = "no masked-LM head: the input embeddings unembed" if info.no_lm_head else "masked-LM head"
        return f"encoder: bidirectional attention, LayerNorm after each residual add; {head}"
    return "parallel attention + FFN" if info.parallel_blocks else "sequential"
