"""How the app words what it tells people: messages start with a capital and end with a full
stop, counts agree with their noun."""

from __future__ import annotations

from tqdm import tqdm


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


def duration(seconds: float) -> str:
    """``"about 40 s"``, ``"about 12 min"``, ``"about 3 h 10 min"``: a time estimate, rounded as
    far as an estimate deserves."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"about {minutes} min"
    hours, minutes = divmod(round(seconds / 600) * 10, 60)
    return f"about {hours} h" + (f" {minutes} min" if minutes else "")


def probability(p: float) -> str:
    """A probability as every page and command prints it: ``"77.25%"`` from 1 % up, three
    significant digits below (``"6.85e-09"``), ``"0"`` for zero. A fixed number of decimals would
    print the probabilities left after an ablation (1e-9 and less) as 0."""
    if p == 0:
        return "0"
    return f"{p:.2%}" if p >= 0.01 else f"{p:.2e}"


def step_progress(label: str, done: int, total: int, elapsed: float, unit: str = "step") -> str:
    """``"Saliency: step 2 of 5, 00:15 left"``: what the page's progress bar and the CLI say after
    each step of a long computation. The time left is tqdm's own estimate and format (the rate of
    the steps done so far); there is none before the first step or after the last. `unit` names
    the steps (``"layer"`` for a forward pass)."""
    ahead = ", {remaining} left" if 0 < done < total else ""
    return tqdm.format_meter(done, total, elapsed, prefix=label, bar_format=f"{{desc}}: {unit} {{n_fmt}} of {{total_fmt}}" + ahead)


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
    if info.encoder_layers:
        norm = "LayerNorm after each residual add" if info.post_ln else "normalised before each block"
        return f"encoder–decoder: {info.encoder_layers} encoder and {info.n_layers} decoder layers, cross-attention; {norm}"
    return "parallel attention + FFN" if info.parallel_blocks else "sequential"
