"""One block of a Run computed again, alone, with hooks: what a view needs that the Run does not keep.

The Run keeps ``resid_pre`` of every layer, exactly the input of block ``l``. So block ``l`` can be
called on it with the other inputs the model hands its blocks (positions, rotary cos/sin, mask),
taken from a pass over the prompt stopped as it enters a block: only the embeddings and rotary
tables are computed. Hooks on the block's hook points see every intermediate value; a hook may
raise :class:`BlockStop` to end the call as soon as what it was run for is known. The other layers
are never computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from llm_flow.errors import UnsupportedModelError
from llm_flow.models.run import Run

Hooks = Sequence[tuple[str, Callable]]


class BlockStop(Exception):
    """Raised from a hook to end a pass as soon as what it was run for is known."""


def input_sources(run: Run, layer: int) -> list[int]:
    """Blocks whose inputs to try for `layer`, cheapest first: the first block of `layer`'s type
    (a model hands every block of one type the same positions, rotary tables and mask: block 0
    unless the config gives layers types, as Gemma 2 and 3 do), then `layer` itself."""
    types = getattr(run.model.bridge.original_model.config, "layer_types", None)
    first = list(types).index(types[layer]) if types is not None and len(types) > layer else 0
    return list(dict.fromkeys((first, layer)))


def block_inputs(run: Run, block: int, hooks: Hooks = ()) -> tuple[tuple, dict]:
    """The arguments the model passes to `block` besides the hidden states, from a pass over the
    prompt stopped as it enters that block; `hooks` see what is computed on the way (the
    embeddings). The caller holds ``model.lock``."""
    bridge = run.model.bridge
    seen: dict[str, object] = {}

    def grab(module, args, kwargs) -> None:
        seen["args"], seen["kwargs"] = args, kwargs
        raise BlockStop

    handle = bridge.blocks[block].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with bridge.hooks(fwd_hooks=list(hooks)):
            bridge(run.tokens[None], return_type=None, use_cache=False)
    except BlockStop:
        pass
    finally:
        handle.remove()
    if "args" not in seen:
        raise UnsupportedModelError(
            f"llm-flow cannot see the inputs of block {block} of {run.model.info.architecture}: the model does "
            "not call it during a forward pass; the head and model views of the Attention page still work"
        )
    return seen["args"], seen["kwargs"]


def call_block(run: Run, layer: int, source: int, hooks: Hooks) -> None:
    """Block `layer` called on the Run's ``resid_pre`` with the other inputs block `source`
    received, under `hooks` (which keep what they need; one may raise :class:`BlockStop`)."""
    model = run.model
    block = model.bridge.blocks[layer]
    weight = next(block.parameters())
    with model.lock, torch.inference_mode(), model.no_kept_patterns():
        args, kwargs = block_inputs(run, source)
        hidden = run.layer(layer).resid_pre[None].to(device=weight.device, dtype=weight.dtype)  # [1, T, d_model]
        if "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": hidden}
        else:
            args = (hidden, *args[1:])
        with model.bridge.hooks(fwd_hooks=list(hooks)):
            try:
                block(*args, **kwargs)
            except BlockStop:
                pass
