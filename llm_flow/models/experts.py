"""Mixture-of-experts FFNs (Mixtral, Qwen2/3-MoE, OLMoE) as sums of weighted expert neurons.

Such an FFN adds ``Σ_{e chosen for token i} w[i, e] · E_e(x_i)`` (plus, in Qwen2-MoE, a shared
expert gated by ``sigmoid(x_i · w_g)``) with ``E_e(x) = (act(x W_gate[e]) ⊙ x W_up[e]) W_down[e]``.
So the FFN node is still one part of the residual, and inside it every neuron of every chosen
expert is a part ``act[i, n] · w[i, e] · W_down[e][n]`` (docs/method.md#mixtures-of-experts).
The Run keeps, per token, the activations of the neurons of its chosen experts (slot by slot,
in the router's order, then the shared expert's): as many as a dense FFN of the active width,
never all experts' neurons.

The experts' inputs, choices and weights are read from the transformers module itself (a
pre-hook on its ``experts``), exactly as the layer applied them; the activations are recomputed
from those inputs, and the load-time probe checks that the neurons add up to the layer's output.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class ExpertRouting:
    """Which experts each token's FFN used, and with what weight."""

    indices: torch.Tensor  # [T, k] experts chosen per token, in the router's order
    weights: torch.Tensor  # [T, k] their weights as the layer applied them
    shared_gate: torch.Tensor | None  # [T] gate of the shared expert (Qwen2-MoE), or None
    width: int  # neurons per routed expert

    def tensors(self) -> Iterator[torch.Tensor]:
        yield self.indices
        yield self.weights
        if self.shared_gate is not None:
            yield self.shared_gate

    def slot(self, position: int, neuron: int) -> tuple[int | None, int]:
        """(expert, neuron within it) of active neuron `neuron` at `position`; None: shared."""
        k = self.indices.shape[1]
        if neuron < k * self.width:
            return int(self.indices[position, neuron // self.width]), neuron % self.width
        return None, neuron - k * self.width


class MoeLayer:
    """The transformers modules of one mixture-of-experts FFN, with the layout llm-flow reads:
    ``experts.gate_up_proj`` [E, 2 f, d], ``experts.down_proj`` [E, d, f], ``experts.act_fn``,
    called as ``experts(x, top_k_index, top_k_weights)``; optionally ``shared_expert`` (an MLP
    with ``down_proj``) and ``shared_expert_gate``."""

    def __init__(self, block: torch.nn.Module, experts_per_token: int) -> None:
        self.experts = block.experts
        self.shared = getattr(block, "shared_expert", None)
        self.shared_gate = getattr(block, "shared_expert_gate", None)
        self.n_experts, _, self.width = self.experts.down_proj.shape
        self.experts_per_token = experts_per_token

    @classmethod
    def find(cls, mlp: torch.nn.Module, config) -> "MoeLayer | None":
        """The MoE behind a TransformerLens FFN bridge, or None (a dense FFN, or a layout llm-flow
        does not read). `config`: the model's, for how many experts a token uses."""
        block = getattr(mlp, "original_component", mlp)
        experts = getattr(block, "experts", None)
        if not all(hasattr(experts, name) for name in ("gate_up_proj", "down_proj", "act_fn")):
            return None
        if experts.down_proj.dim() != 3 or experts.gate_up_proj.shape[1] != 2 * experts.down_proj.shape[2]:
            return None
        top_k = getattr(config, "num_experts_per_tok", None)
        return cls(block, int(top_k)) if top_k else None

    @property
    def n_active(self) -> int:
        """Neurons a token uses: its experts' and the shared expert's."""
        shared = 0 if self.shared is None else self.shared.down_proj.in_features
        return self.experts_per_token * self.width + shared

    def capture(self, store: dict[str, torch.Tensor]) -> list[torch.utils.hooks.RemovableHandle]:
        """Hooks that keep the experts' inputs, choices and weights (and the shared expert's
        activations and gate) of the next pass in `store`."""

        def experts_in(module, args, kwargs) -> None:
            values = list(args) + [kwargs[k] for k in ("top_k_index", "top_k_weights") if k in kwargs]
            hidden, index, weights = values[:3]
            store["x"], store["index"], store["weights"] = hidden.detach(), index.detach(), weights.detach()

        handles = [self.experts.register_forward_pre_hook(experts_in, with_kwargs=True)]
        if self.shared is not None:
            handles.append(self.shared.down_proj.register_forward_pre_hook(
                lambda module, args: store.__setitem__("shared_acts", args[0].detach().reshape(-1, args[0].shape[-1]))
            ))  # fmt: skip
        if self.shared_gate is not None:
            handles.append(self.shared_gate.register_forward_hook(
                lambda module, args, out: store.__setitem__("shared_gate", torch.sigmoid(out.detach().reshape(-1).float()))
            ))  # fmt: skip
        return handles

    def activations(self, store: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ExpertRouting]:
        """Active neurons [T, k f (+ f_s)] and the routing, from what `capture` kept."""
        x, index, weights = store["x"], store["index"], store["weights"]
        n_tokens, k = index.shape
        acts = x.new_zeros(n_tokens, k, self.width)
        for expert in torch.unique(index).tolist():
            tokens, slots = torch.nonzero(index == expert, as_tuple=True)
            gate, up = torch.nn.functional.linear(x[tokens], self.experts.gate_up_proj[expert]).chunk(2, dim=-1)
            acts[tokens, slots] = self.experts.act_fn(gate) * up
        acts = acts.reshape(n_tokens, k * self.width)
        if "shared_acts" in store:
            acts = torch.cat([acts, store["shared_acts"]], dim=-1)
        routing = ExpertRouting(index.clone(), weights.float().clone(), store.get("shared_gate"), self.width)
        return acts, routing

    def output_weights(self, routing: ExpertRouting, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """W_out rows of the active neurons at `position` [n, d] and each row's factor [n] (the
        router weight of its expert, the shared expert's gate): part n = act[n] · factor[n] · W[n]."""
        rows = [self.experts.down_proj[int(e)].T for e in routing.indices[position]]  # k x [f, d]
        factors = [routing.weights[position].repeat_interleave(self.width)]
        if self.shared is not None:
            rows.append(self.shared.down_proj.weight.T)
            gate = 1.0 if routing.shared_gate is None else routing.shared_gate[position]
            factors.append(torch.full((self.shared.down_proj.in_features,), float(gate)))
        return torch.cat(rows).detach().float(), torch.cat(factors).float()
