"""The interface every consumer sees: a model that runs a prompt into a `Run`, exposes the few
weights needed to decompose what it computed, and hands out the modules that gradients, hooked
passes and generation need. Nothing outside `llm_flow.models` knows which class implements it."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from llm_flow.errors import PromptError
from llm_flow.models.experts import ExpertRouting
from llm_flow.models.run import Run
from llm_flow.wording import plural

if TYPE_CHECKING:
    from llm_flow.models.fast_attention import Capture
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase


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
    encoder_layers: int = 0  # an encoder–decoder: its encoder's layers (n_layers counts the decoder's)
    # attention rows rebuilt from kept queries and keys on a fast-attention pass (issue 21);
    # False: every layer's pattern is stored (attention llm-flow cannot rebuild exactly)
    recomputed_rows: bool = False


class TransparentLlm(ABC):
    """A language model whose forward pass can be decomposed into attention-head and FFN parts.

    One model serves every session of the app: any pass over its modules (a Run, a hooked pass,
    gradients, generation) holds `lock`, because hooks and caches live on the shared modules."""

    info: ModelInfo
    max_prompt_tokens: int | None
    max_run_bytes: int | None  # refuse runs estimated above this; None: the memory available

    # --- tokens -------------------------------------------------------------------------------

    @property
    @abstractmethod
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's own tokenizer (chat templates, special ids, decoding whole texts)."""

    @abstractmethod
    def encode(self, prompt: str) -> list[int]:
        """Token ids as they will be fed to the model (BOS per this model's setting)."""

    @abstractmethod
    def decode_tokens(self, token_ids: list[int] | torch.Tensor) -> list[str]:
        """Each token id decoded on its own, for labels."""

    # --- passes -------------------------------------------------------------------------------

    @abstractmethod
    def run(self, prompt: str) -> Run:
        """Run `prompt` once and keep what the route maths needs."""

    @abstractmethod
    def run_ids(self, token_ids: list[int], prompt: str | None = None) -> Run:
        """A Run over token ids as given (a generated continuation or a chat template must not be
        decoded and tokenised again: the split could change)."""

    @property
    @abstractmethod
    def lock(self) -> threading.Lock:
        """Held during any pass over the shared modules, by every caller."""

    @property
    @abstractmethod
    def hf_model(self) -> PreTrainedModel:
        """The `transformers` causal LM: gradients on input embeddings (attribution), direct
        logits, and `generate`. No hooks are attached to its passes unless the caller adds them."""

    @property
    @abstractmethod
    def bridge(self) -> TransformerBridge:
        """The same modules with TransformerLens hook points (``blocks.{l}.attn.hook_z`` ...) and
        ``run_with_hooks``: interventions and attention views run hooked passes through it."""

    @abstractmethod
    def segments(self, ids: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        """Extra inputs of a pass over `ids` besides the ids: an encoder that knows sentence
        pairs reads "A [SEP] B" with B's token types set (``token_type_ids``); {} for others.
        Every pass over a run's tokens passes them, so a re-run reads what the run read."""

    @abstractmethod
    def no_kept_patterns(self) -> AbstractContextManager[None]:
        """Wrap any hooked pass over `bridge`: drops the full attention patterns some modules keep
        after they return, which would otherwise pile up over the layers of a long prompt."""

    @abstractmethod
    def rows_pass(self) -> AbstractContextManager["Capture | None"]:
        """Wrap a hooked pass over `bridge` that reads attention rows (the caller holds `lock`).
        Gives a `Capture` that fills, layer by layer as the pass goes, with the pass's own rows
        and values where the model's rows are rebuilt from queries and keys (its attention then
        runs as in `run`, and ``hook_pattern``/``hook_v`` do not fire); None otherwise, and the
        pass is the eager one with those hooks (wrapped in `no_kept_patterns`)."""

    @abstractmethod
    def layer_progress(self, report: Callable[[int, int], None]) -> AbstractContextManager[None]:
        """While inside, ``report(layers_done, n_layers)`` after each block of a pass made by the
        calling thread (other threads' passes are not reported). An exception `report` raises
        ends that pass: how a long forward pass is followed and cancelled."""

    @abstractmethod
    def generate_ids(
        self, token_ids: list[int], max_new_tokens: int, last_processor: LogitsProcessor, eos_ids: frozenset[int]
    ) -> list[int]:
        """Up to `max_new_tokens` ids after `token_ids` by the library's own decoding (``generate``
        with its KV cache), greedy over what `last_processor` makes of each step's logits (it sees
        them raw, and may leave one token to pick), stopping after any of `eos_ids`."""

    @abstractmethod
    def post_norm_gain(self, layer: int, norm: str, scale: torch.Tensor) -> torch.Tensor:
        """The per-position, per-dimension factor of a post-block RMSNorm (``ln1_post`` or
        ``ln2_post``) whose scale `scale` [T, 1] was recorded in a pass: [T, d_model]."""

    @abstractmethod
    def post_ln_bias(self, layer: int, norm: str) -> torch.Tensor:
        """β of a post-LN block's LayerNorm (``ln1`` after attention, ``ln2`` after the FFN), as
        encoders have it: it enters the state and belongs to no part (docs/method.md#encoders)."""

    @abstractmethod
    def active_neuron_weights(self, layer: int, routing: ExpertRouting, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A mixture-of-experts layer: the W_out rows of the neurons `position` used [n, d_model]
        and each row's router weight [n] (llm_flow/models/experts.py)."""

    @abstractmethod
    def attention_output_weight(self, layer: int) -> torch.Tensor:
        """W_O of `layer`: [n_heads, d_head, d_model]."""

    @abstractmethod
    def attention_output_bias(self, layer: int) -> torch.Tensor | None:
        """b_O of `layer` [d_model], or None when the model has no such bias."""

    @abstractmethod
    def attention_output_gram(self, layer: int) -> torch.Tensor:
        """``W_O[h] W_O[h]ᵀ`` of `layer`: [n_heads, d_head, d_head] float32, accumulated in float64.
        Kept by the model (its weights never change): the attention views' value norms read it
        for every window of every prompt."""

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

    def parameter_bytes(self) -> int:
        """Bytes of the model's parameters and buffers (what unloading it gives back)."""
        tensors = [*self.hf_model.parameters(), *self.hf_model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def token_limit(self) -> tuple[int, str]:
        """The most tokens one pass may analyse, and which limit that is (the model's context
        length or the configured ``limits.max_prompt_tokens``, whichever is lower)."""
        limits = [(self.info.n_ctx, "the model's context length")]
        if self.max_prompt_tokens is not None:
            limits.append((self.max_prompt_tokens, "the configured limit (limits.max_prompt_tokens)"))
        return min(limits)

    def check_length(self, n_tokens: int, what: str = "the prompt is", fix: str = "shorten it") -> None:
        """Refuse `n_tokens` over `token_limit`: the one length check for prompts, generated text
        and attribution requests. `what` names the text and its verb, `fix` says what to change."""
        limit, reason = self.token_limit()
        if n_tokens > limit:
            raise PromptError(
                f"{what} {plural(n_tokens, 'token')} long, over {reason} of {plural(limit, 'token')}: {fix}"
            )
