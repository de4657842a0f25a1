"""Exceptions that carry a message a user can act on.

Every error llm-flow raises on bad input is one of these, so the CLI and the app can show the
message instead of a stack trace. Each subclasses the built-in exception a Python user would
expect (``ValueError``, ``FileNotFoundError`` ...) so ordinary ``except`` clauses keep working.
"""


class LlmFlowError(Exception):
    """Base class: the message says what went wrong and what to change."""


class ConfigError(LlmFlowError, ValueError):
    """A configuration file is missing, unreadable or has a bad key or value."""


class ModelNotFoundError(LlmFlowError, LookupError):
    """A model name, local folder or file that does not exist."""


class ModelLoadError(LlmFlowError, RuntimeError):
    """A model that exists but could not be loaded (network, format, architecture)."""


class UnsupportedModelError(ModelLoadError):
    """A model whose architecture llm-flow cannot decompose exactly."""


class PromptError(LlmFlowError, ValueError):
    """A prompt that cannot be analysed (empty, or longer than allowed)."""


class ArgumentError(LlmFlowError, ValueError):
    """An out-of-range argument: threshold, target position, layer, device or dtype."""


class MemoryLimitError(LlmFlowError, MemoryError):
    """A run that would not fit in memory (refused beforehand), or ran out of memory."""


class ExportError(LlmFlowError, RuntimeError):
    """A figure that cannot be exported, e.g. no browser for SVG/PNG rendering."""


class DatasetError(LlmFlowError, ValueError):
    """A dataset results folder that is missing, incomplete, or made with other settings."""
