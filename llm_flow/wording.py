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
