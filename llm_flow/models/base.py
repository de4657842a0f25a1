"""The interface the route maths and the views see: a model that can run a prompt and expose
the few weights needed to decompose what it computed."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from llm_flow.models.run import Run


@dataclass(frozen=True)
class ModelInfo:
    """What the app's model panel shows and what the maths needs to know about shapes."""

    name: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    vocab_size: int
    n_params: int
    n_ctx: int
    parallel_blocks: bool
    device: str
    dtype: str
    post_norms: bool = False  # block outputs normalised before the residual add (Gemma 2/3)
    bidirectional: bool = False  # an encoder: every token attends to every token (BERT)
    post_ln: bool = False  # LayerNorm after the residual add, residual included (BERT's post-LN)
    no_lm_head: bool = False  # no (masked-)LM head: the input embeddings serve as the unembedding
    n_experts: int = 0  # mixture of experts: experts per FFN (d_mlp then counts a token's active neurons)
    experts_per_token: int = 0


class TransparentLlm(ABC):
    """A language model whose forward pass can be decomposed into attention-head and FFN parts."""

    info: ModelInfo
    max_prompt_tokens: int | None
    max_run_bytes: int | None  # refuse runs estimated above this; None: the memory available

    @abstractmethod
    def run(self, prompt: str) -> Run:
        """Run `prompt` once and keep what the route maths needs."""

    @abstractmethod
    def encode(self, prompt: str) -> list[int]:
        """Token ids as they will be fed to the model (BOS per this model's setting)."""

    @abstractmethod
    def decode_tokens(self, token_ids: list[int] | torch.Tensor) -> list[str]:
        """Each token id decoded on its own, for labels."""

    @abstractmethod
    def attention_output_weight(self, layer: int) -> torch.Tensor:
        """W_O of `layer`: [n_heads, d_head, d_model]."""

    @abstractmethod
    def attention_output_bias(self, layer: int) -> torch.Tensor | None:
        """b_O of `layer` [d_model], or None when the model has no such bias."""

    @abstractmethod
    def neuron_output_weight(self, layer: int) -> torch.Tensor:
        """W_out of the FFN of `layer`: [d_mlp, d_model]."""

    @abstractmethod
    def neuron_output_bias(self, layer: int) -> torch.Tensor | None:
        """b_out of the FFN of `layer` [d_model], or None."""

    @abstractmethod
    def unembed(self, residual: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Logits of residual vectors [..., d_model] -> [..., vocab], optionally through the final norm."""

    @abstractmethod
    def vocab_projection(self, vectors: torch.Tensor) -> torch.Tensor:
        """``vectors @ W_U`` [..., vocab]: which tokens a block's output pushes up or down.

        No final norm and no unembedding bias: an update is a direction, not a residual state."""

    @property
    def name(self) -> str:
        return self.info.name
