"""`load_model`: one entry point for every way a user names a model.

Sources, tried in this order: an in-memory ``transformers`` model; a short name from the config;
a ``.gguf`` file; a local Hugging Face folder; a Hugging Face hub id. Whatever the source, the
model ends up as a ``transformers`` model plus tokenizer wrapped in a TransformerBridge.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.tools.model_registry.registry_io import resolve_model_alias
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llm_flow.config import CONFIG_ENV, Config, ModelEntry, PackagedFile, default_config_path, load_config
from llm_flow.errors import (
    ArgumentError,
    ConfigError,
    ModelLoadError,
    ModelNotFoundError,
)
from llm_flow.models.base import TransparentLlm
from llm_flow.models.bridge import BridgeLlm
from llm_flow.models.gguf import converted_folder
from llm_flow.models.packaged import Progress, packaged_file

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(
    source: str | os.PathLike[str] | PreTrainedModel,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    config: Config | None = None,
    prepend_bos: bool | None = None,
    max_prompt_tokens: int | None = None,
    max_run_bytes: int | None = None,
    progress: Progress | None = None,
) -> TransparentLlm:
    """Load a model for route analysis.

    `prepend_bos`: None follows the config entry (or the tokenizer's own behaviour); True/False
    force a BOS token on or off. `max_prompt_tokens` and `max_run_bytes` (the largest estimated
    memory one run may take; None: whatever is available when it runs) default to the config's
    limits.
    `progress` receives one message per slow step (download, conversion, load).
    """
    device, dtype = _check_device(device, dtype)
    if isinstance(source, PreTrainedModel):
        if tokenizer is None:
            raise ArgumentError("an in-memory model needs its tokenizer: load_model(model, tokenizer=...)")
        name = getattr(source.config, "name_or_path", "") or type(source).__name__
        return _wrap(source, tokenizer, name, device, dtype, prepend_bos, max_prompt_tokens, max_run_bytes)
    if not isinstance(source, (str, os.PathLike)):
        raise ArgumentError(f"cannot load a model from a {type(source).__name__}")
    config = config if config is not None else _default_config()
    name = os.fspath(source).strip()
    if not name:
        raise ArgumentError("no model given: pass a configured name, a folder, a .gguf file or a hub id")
    entry = config.model(name) if config is not None else None
    if entry is not None:
        resolved: str | PackagedFile = config.resolve_source(entry)
        prepend_bos = _entry_bos(entry) if prepend_bos is None else prepend_bos
        trust_remote_code = entry.trust_remote_code
    else:
        resolved, trust_remote_code = name, False
    if max_prompt_tokens is None and config is not None:
        max_prompt_tokens = config.max_prompt_tokens
    if max_run_bytes is None and config is not None:
        max_run_bytes = config.max_run_bytes
    folder_or_id = _local_or_hub(resolved, name, config, progress)
    if progress:
        progress(f"Loading {name}…")
    hf_model, hf_tokenizer = _from_pretrained(folder_or_id, name, dtype, trust_remote_code, config)
    return _wrap(hf_model, hf_tokenizer, name, device, dtype, prepend_bos, max_prompt_tokens, max_run_bytes)


def _default_config() -> Config | None:
    """The default config; without one (a non-editable install) short names simply do not resolve."""
    path = default_config_path()
    if not path.exists() and not os.environ.get(CONFIG_ENV):
        return None
    return load_config(path)


def _entry_bos(entry: ModelEntry) -> bool | None:
    return None if entry.prepend_bos == "auto" else entry.prepend_bos


def _local_or_hub(
    source: str | PackagedFile, name: str, config: Config | None, progress: Progress | None
) -> str:
    """A local folder path, or a hub id to try online."""
    if isinstance(source, PackagedFile):
        return str(converted_folder(packaged_file(source, progress), progress))
    path = Path(source).expanduser()
    if source.lower().endswith(".gguf"):
        return str(converted_folder(path, progress))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a folder but not a Hugging Face model folder (it has no config.json)"
            )
        return str(path)
    if path.is_absolute() or source.startswith((".", "~")) or not _HUB_ID.match(source):
        raise ModelNotFoundError(
            f"unknown model {name!r}: no such local folder or file, and not a configured model "
            f"name{_known(config)}"
        )
    return source


def _known(config: Config | None) -> str:
    return f" (configured: {', '.join(config.models)})" if config is not None else ""


def _from_pretrained(
    folder_or_id: str, name: str, dtype: torch.dtype, trust_remote_code: bool, config: Config | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    is_local = Path(folder_or_id).is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder_or_id, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            folder_or_id,
            dtype=dtype,
            attn_implementation="eager",
            trust_remote_code=trust_remote_code,
        )
    except OSError as exc:
        if is_local:
            raise ModelLoadError(f"cannot load the model folder {folder_or_id}: {_first_line(exc)}") from exc
        raise ModelNotFoundError(
            f"unknown model {name!r}: not a configured model name{_known(config)}, not a local "
            f"folder, and the Hugging Face hub could not provide it ({_first_line(exc)}). "
            "Offline? Use a local folder or a .gguf file"
        ) from exc
    except (ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load {name!r}: {_first_line(exc)}") from exc
    return model, tokenizer


def _wrap(
    hf_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    prepend_bos: bool | None,
    max_prompt_tokens: int | None,
    max_run_bytes: int | None,
) -> TransparentLlm:
    # The bridge reloads a tokenizer from its name unless told it already adds BOS; llm-flow
    # tokenises by itself, so hand the bridge a copy marked as such and keep the original.
    bridge_tokenizer = copy.deepcopy(tokenizer)
    bridge_tokenizer.init_kwargs.setdefault("name_or_path", name)
    bridge_tokenizer.init_kwargs["add_bos_token"] = True
    if prepend_bos is True and tokenizer.bos_token_id is None:
        raise ConfigError(f"{name}: prepend_bos is true but the tokenizer has no BOS token")
    # Old short names ("gpt2") make the bridge log a deprecation; give it the official name.
    bridge_name = resolve_model_alias(name) or name
    try:
        bridge = TransformerBridge.boot_transformers(
            bridge_name, hf_model=hf_model.eval().requires_grad_(False), tokenizer=bridge_tokenizer, device=device, dtype=dtype
        )
    except Exception as exc:  # the bridge raises many types for architectures it cannot wrap
        raise ModelLoadError(f"TransformerLens cannot wrap {name!r}: {_first_line(exc)}") from exc
    return BridgeLlm(bridge, tokenizer, name, prepend_bos, max_prompt_tokens, max_run_bytes)


def _check_device(device: str | torch.device, dtype: torch.dtype | str) -> tuple[torch.device, torch.dtype]:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ArgumentError(f"unknown dtype {dtype!r}: use one of {', '.join(_DTYPES)}")
        dtype = _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise ArgumentError(f"unsupported dtype {dtype}: use torch.float32, torch.bfloat16 or torch.float16")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ArgumentError(f"unknown device {device!r}: use 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError("device 'cuda' was asked for but no CUDA GPU is available: use 'cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ArgumentError(f"device {device.type!r} is not supported: use 'cpu' or 'cuda'")
    if device.type == "cpu" and dtype == torch.float16:
        raise ArgumentError("float16 needs a CUDA device; on the CPU use float32 (or bfloat16)")
    return device, dtype


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
