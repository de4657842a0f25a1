"""A forward pass on the model's fast attention that keeps what rebuilds its attention rows.

``transformers`` attention modules compute their post-rotary queries and keys, then hand them to
an attention function picked by ``config._attn_implementation``, with the layer's own scale,
sliding window and soft-cap. For the duration of a Run we register one more such function: it
keeps the queries, keys and values (`Capture`) and computes the output with SDPA (or, for a
soft-capped layer SDPA cannot do, from the kept rows themselves, chunk by chunk). The
TransformerLens attention bridges, which reimplement attention eagerly to expose the pattern,
hand the call straight to the module they wrap meanwhile; every other bridge hook still fires.

Whether a model's rows are rebuilt exactly this way is checked at load against its eager
pattern (`llm_flow.models.probe.choose_row_storage`); models whose attention does not go through
this function (ALiBi, old attention code) keep the stored-pattern path.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from llm_flow.errors import UnsupportedModelError
from llm_flow.models.query_keys import AttentionRule, QueryKeyPattern

NAME = "llm_flow_capture"
_local = threading.local()


class Capture:
    """What the capturing attention function keeps during one pass, per layer."""

    def __init__(self, layer_of: dict[int, int], causal: bool) -> None:
        self.layer_of = layer_of  # id() of each attention module (and its submodules) -> layer
        self.causal = causal
        self.patterns: dict[int, QueryKeyPattern] = {}
        self.values: dict[int, torch.Tensor] = {}  # [T, n_kv, d_head]
        # layers whose output is computed from the kept rows instead of SDPA: an intervention
        # that subtracts parts made from those rows then leaves exactly the rest
        self.from_rows: set[int] = set()


def _capturing_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """An attention function (query [1, H, T, d], key and value [1, n_kv, T, d]) that keeps the
    three for the Run being made by this thread, then attends as SDPA does."""
    capture: Capture | None = getattr(_local, "capture", None)
    layer = None if capture is None else capture.layer_of.get(id(module))
    softcap = kwargs.pop("softcap", None)
    window = kwargs.pop("sliding_window", None)
    if layer is None or query.shape[0] != 1:
        if softcap is not None:
            # never: the config is restored after the Run; SDPA alone would drop the cap silently
            raise UnsupportedModelError("soft-capped attention runs only inside a Run: SDPA has no soft cap")
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    rule = AttentionRule(
        scaling=float(scaling) if scaling is not None else query.shape[-1] ** -0.5,
        causal=capture.causal,
        softcap=None if softcap is None else float(softcap),
        window=None if window is None else int(window),
    )
    # kept as [T, heads, d_head] views of the tensors attention gets (fresh, never edited after)
    pattern = QueryKeyPattern(own(query[0].transpose(0, 1)), own(key[0].transpose(0, 1)), rule)
    values = own(value[0].transpose(0, 1))
    capture.patterns[layer], capture.values[layer] = pattern, values
    if softcap is not None or layer in capture.from_rows:
        return pattern.attend(values)[None], None  # [1, T, H, d]
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


@functools.cache
def _register() -> None:
    AttentionInterface.register(NAME, _capturing_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


@contextmanager
def capturing_attention(
    hf_model: torch.nn.Module, attention_bridges: list[torch.nn.Module], capture: Capture,
    norm_bridges: list[torch.nn.Module] = (),
) -> Iterator[None]:
    """While inside, passes of `hf_model` made by this thread attend with SDPA and fill `capture`.
    `norm_bridges`: norms whose scale no hook reads, run as the wrapped module alone too (the
    bridge otherwise computes the norm's statistics a second time for its ``hook_scale``).

    The caller holds the model's lock: the config switch is seen by the shared modules."""
    _register()
    config = hf_model.config
    before = config._attn_implementation
    delegated = [*attention_bridges, *norm_bridges]
    for bridge in delegated:  # on the bridge itself: its __setattr__ would pass it down
        object.__setattr__(bridge, "forward", functools.partial(_delegate, bridge))
    config._attn_implementation = NAME
    _local.capture = capture
    try:
        yield
    finally:
        _local.capture = None
        config._attn_implementation = before
        for bridge in delegated:
            object.__delattr__(bridge, "forward")


def own(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` itself when it is all of its storage, else a copy: a view kept in a Run must not
    keep a larger tensor alive (GPT-2's query is a third of its fused q, k, v)."""
    if tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size():
        return tensor
    return tensor.clone()


def _delegate(bridge: torch.nn.Module, hidden_states: torch.Tensor, *args, **kwargs):
    """The wrapped ``transformers`` module itself, in place of the bridge's reimplementation;
    input and output still pass the bridge's ``hook_in`` and ``hook_out`` (``hook_resid_mid`` is
    ``ln2.hook_in``; interventions edit ``hook_attn_out``)."""
    output = bridge.original_component(bridge.hook_in(hidden_states), *args, **kwargs)
    if isinstance(output, tuple):
        return (bridge.hook_out(output[0]), *output[1:])
    return bridge.hook_out(output)


def attention_modules(attention_bridges: list[torch.nn.Module]) -> dict[int, int]:
    """id() of every module inside each layer's attention -> that layer."""
    return {id(sub): layer for layer, bridge in enumerate(attention_bridges) for sub in bridge.original_component.modules()}
