"""Encoder–decoders (Marian, T5, BART, mBART): a source text read by an encoder and a target text
written by a decoder that also reads the encoder through cross-attention.

They run as plain ``transformers`` modules (TransformerLens 4.3 boots these architectures, but its
encoder–decoder bridge has no ``blocks`` for ``set_use_attn_result`` and none of the hooks
llm-flow's decoder engine reads), behind the same `TransparentLlm` interface. A run's pass attends
with SDPA and keeps queries and keys (`llm_flow.models.seq2seq_capture`); the model is eager
otherwise, for the passes that read ``output_attentions`` (the route contributions).
What only a decoder-only model has (a `Run` of one prompt, the bridge, the causal LM) is refused
with the reason, so no decoder-only page or command gives a wrong answer on one of these.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, NoReturn

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from llm_flow.errors import ArgumentError, PromptError, UnsupportedModelError
from llm_flow.models.base import ModelInfo, TransparentLlm
from llm_flow.models.seq2seq_capture import QueryKeyCapture
from llm_flow.models.seq2seq_layout import SEQ2SEQ_TYPES, seq2seq_layout, seq2seq_refusal
from llm_flow.models.seq2seq_run import Seq2SeqRun

if TYPE_CHECKING:
    from transformers import LogitsProcessor

#: The most target tokens `run_pair` generates when no target is given.
MAX_GENERATED = 256


class Seq2SeqLlm(TransparentLlm):
    """An encoder–decoder: `run_pair(source, target)` is its Run."""

    hf_seq2seq: PreTrainedModel  # the transformers encoder–decoder (eager but in a run's pass): its passes and `generate`

    def __init__(
        self,
        hf_model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        max_prompt_tokens: int | None = None,
        max_run_bytes: int | None = None,
    ) -> None:
        if hf_model.config.model_type not in SEQ2SEQ_TYPES:
            raise UnsupportedModelError(f"{name}: {seq2seq_refusal(type(hf_model).__name__)}")
        self.hf_seq2seq = hf_model.eval().requires_grad_(False)
        # the route pass reads output_attentions, which only eager attention returns; a run's pass switches to SDPA
        self.hf_seq2seq.set_attn_implementation("eager")
        self._tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.max_run_bytes = max_run_bytes
        self._lock = threading.Lock()
        config = hf_model.config
        start = getattr(config, "decoder_start_token_id", None)
        if start is None:
            start = hf_model.generation_config.decoder_start_token_id
        if start is None:
            raise UnsupportedModelError(f"{name}: the config names no decoder_start_token_id, so the target cannot begin")
        self.decoder_start_token_id = int(start)
        parameter = next(hf_model.parameters())
        d_model = config.d_model
        n_heads = getattr(config, "decoder_attention_heads", None) or config.num_heads
        self.info = ModelInfo(
            name=name,
            architecture=type(hf_model).__name__,
            n_layers=getattr(config, "decoder_layers", None) or config.num_decoder_layers,
            n_heads=n_heads,
            n_kv_heads=n_heads,
            d_model=d_model,
            d_head=getattr(config, "d_kv", None) or d_model // n_heads,
            d_mlp=getattr(config, "decoder_ffn_dim", None) or config.d_ff,
            vocab_size=config.vocab_size,
            n_params=sum(p.numel() for p in hf_model.parameters()),
            n_ctx=getattr(config, "max_position_embeddings", None) or 512,
            parallel_blocks=False,
            device=str(parameter.device),
            dtype=str(parameter.dtype).removeprefix("torch."),
            post_ln=seq2seq_layout(config).post_ln,
            encoder_layers=getattr(config, "encoder_layers", None) or config.num_layers,
        )

    # --- tokens -------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    def encode(self, prompt: str) -> list[int]:
        """The source's token ids, as the tokenizer gives them (end-of-sequence included)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError("the source text is empty: type the text the encoder reads (the target is typed "
                              "apart, or written by the model)")  # fmt: skip
        return list(self._tokenizer(prompt).input_ids)

    def encode_target(self, target: str) -> list[int]:
        """The target text's token ids, as the tokenizer gives them for a target (``text_target``)."""
        if not target.strip():
            raise PromptError("the target text is empty: type the translation to explain, or let the model write it")
        return list(self._tokenizer(text_target=target).input_ids)

    def decode_tokens(self, token_ids: list[int] | torch.Tensor) -> list[str]:
        ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
        return [self._tokenizer.decode([i]) for i in ids]

    def input_embeddings(self, ids: list[int], side: str) -> torch.Tensor:
        """[1, n, d]: what the encoder (`side` "encoder") or the decoder ("decoder") computes from
        `ids` when it is given ``inputs_embeds`` / ``decoder_inputs_embeds`` instead. Marian's
        encoder scales its embeddings only when it looks them up itself; its decoder, and BART's
        and T5's stacks, scale (or not) either way."""
        stack = self.hf_seq2seq.get_encoder() if side == "encoder" else self.hf_seq2seq.get_decoder()
        device = next(self.hf_seq2seq.parameters()).device
        embeds = stack.embed_tokens(torch.tensor([ids], device=device, dtype=torch.long))
        if side == "encoder" and self.hf_seq2seq.config.model_type == "marian":
            embeds = embeds * stack.embed_scale
        return embeds

    def baseline_embedding(self, kind: str, side: str) -> torch.Tensor:
        """[d]: the end-of-sequence token's input embedding (`kind` "eos") or the mean over the
        vocabulary ("mean"), as `side`'s stack sees its input."""
        if kind == "eos":
            eos = self._tokenizer.eos_token_id
            if eos is None:
                raise ArgumentError(f"{self.name} has no end-of-sequence token: use baseline 'zeros' or 'mean'")
            return self.input_embeddings([eos], side)[0, 0]
        with torch.no_grad():
            return self.input_embeddings(list(range(self.info.vocab_size)), side)[0].mean(0)

    # --- passes -------------------------------------------------------------------------------

    def run_pair(self, source: str, target: str | None = None, max_new_tokens: int = 40) -> Seq2SeqRun:
        """The source through the encoder and ``[decoder start] + target`` through the decoder.

        Without a `target` the model writes one greedily (its own generation settings, one beam,
        no sampling), up to `max_new_tokens` tokens."""
        source_ids = self.encode(source)
        self.check_length(len(source_ids), "the source is", "shorten it")
        if target is None:
            target_ids = self.generate_target(source_ids, max_new_tokens)
        else:
            target_ids = self.encode_target(target)
        self.check_length(len(target_ids) + 1, "the target is", "shorten it")
        return self.run_pair_ids(source_ids, target_ids, source, target)

    def run_pair_ids(
        self, source_ids: list[int], target_ids: list[int], source: str | None = None, target: str | None = None
    ) -> Seq2SeqRun:
        """A Seq2SeqRun over token ids as given (the decoder reads the start token, then `target_ids`).

        The pass attends with SDPA where the architecture supports it (all four families do in the
        ``transformers`` versions llm-flow allows; eager otherwise) and keeps each attention's
        queries and keys, never its weights."""
        if not source_ids or not target_ids:
            raise PromptError("an encoder–decoder run needs at least one source token and one target token")
        device = next(self.hf_seq2seq.parameters()).device
        source_tensor = torch.tensor([source_ids], device=device)
        decoder_tensor = torch.tensor([[self.decoder_start_token_id, *target_ids]], device=device)
        capture = QueryKeyCapture(self.hf_seq2seq)
        with self._lock, torch.no_grad(), capture.recording():
            outputs = self.hf_seq2seq(
                input_ids=source_tensor, decoder_input_ids=decoder_tensor, use_cache=False, return_dict=True
            )
        attention = capture.patterns()
        return Seq2SeqRun(
            model=self,
            source=source,
            target=target,
            source_tokens=source_tensor[0].cpu(),
            decoder_tokens=decoder_tensor[0].cpu(),
            source_str_tokens=self.decode_tokens(source_ids),
            decoder_str_tokens=self.decode_tokens(decoder_tensor[0]),
            logits=outputs.logits[0].float().cpu(),
            encoder_attention=attention["encoder"],
            decoder_attention=attention["decoder"],
            cross_attention=attention["cross"],
        )

    def generate_target(self, source_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy target ids after the decoder start (end-of-sequence included when reached)."""
        return self.write_target_ids(source_ids, max_new_tokens)

    def write_target_ids(
        self, source_ids: list[int], max_new_tokens: int, last_processor: "LogitsProcessor | None" = None
    ) -> list[int]:
        """Target ids after the decoder start by ``transformers``' own decoding: one beam, its KV
        cache, and the model's own generation rules (a forced end-of-sequence at the length
        limit, banned tokens), then greedy over what `last_processor` leaves of each step's
        scores (it sees them after those rules, and may leave one token to pick). End-of-sequence
        included when reached."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_GENERATED:
            raise ArgumentError(f"the number of target tokens to write must be 1..{MAX_GENERATED} (got {max_new_tokens!r})")
        settings = GenerationConfig.from_dict({
            **self.hf_seq2seq.generation_config.to_dict(), "num_beams": 1, "do_sample": False,
            "temperature": None, "top_k": None, "top_p": None,
            "max_new_tokens": max_new_tokens, "max_length": None, "min_length": 0, "num_return_sequences": 1,
        })  # fmt: skip
        processors = LogitsProcessorList([last_processor] if last_processor is not None else [])
        device = next(self.hf_seq2seq.parameters()).device
        with self._lock, torch.no_grad():
            out = self.hf_seq2seq.generate(torch.tensor([source_ids], device=device), generation_config=settings,
                                           logits_processor=processors)  # fmt: skip
        return out[0, 1:].tolist()  # one sequence: no padding after its end, and the start token first

    def run(self, prompt: str) -> NoReturn:
        self._refuse_run("model.run_pair(source, target)")

    def run_ids(self, token_ids: list[int], prompt: str | None = None) -> NoReturn:
        self._refuse_run("model.run_pair_ids(source_ids, target_ids)")

    def layer_progress(self, report) -> NoReturn:
        """Follows `run`, which an encoder–decoder does not have."""
        self._refuse_run("model.run_pair(source, target)")

    def parameter_bytes(self) -> int:
        tensors = [*self.hf_seq2seq.parameters(), *self.hf_seq2seq.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    @property
    def hf_model(self) -> NoReturn:
        self._refuse("the decoder-only (causal LM) passes", "attribute its target with llm_flow.attribution.attribute(model, source, method, continuation=target)")

    @property
    def bridge(self) -> NoReturn:
        self._refuse("TransformerLens hooked passes (interventions, route checks)")

    def no_kept_patterns(self) -> AbstractContextManager[None]:
        self._refuse("TransformerLens hooked passes (interventions, route checks)")

    def segments(self, ids: list[int], device: torch.device) -> NoReturn:
        self._refuse("TransformerLens hooked passes (interventions, route checks)")

    def rows_pass(self) -> NoReturn:
        self._refuse("TransformerLens hooked passes (interventions, route checks)")

    def generate_ids(self, token_ids, max_new_tokens, last_processor: "LogitsProcessor", eos_ids) -> NoReturn:
        self._refuse(
            "continuing a prompt",
            "write a target greedily or sampled: llm_flow.views.seq2seq_generation.write_target(model, source, n, settings)",
        )

    def post_norm_gain(self, layer, norm, scale) -> NoReturn:
        self._refuse("the decoder-only route engine", _ROUTES_INSTEAD)

    def post_ln_bias(self, layer, norm) -> NoReturn:
        self._refuse("the decoder-only route engine", _ROUTES_INSTEAD)

    def active_neuron_weights(self, layer, routing, position) -> NoReturn:
        self._refuse("the decoder-only route engine", _ROUTES_INSTEAD)

    def attention_output_weight(self, layer) -> NoReturn:
        self._refuse("the decoder-only route engine", _ROUTES_INSTEAD)

    def attention_output_bias(self, layer) -> NoReturn:
        self._refuse("the decoder-only route engine", _ROUTES_INSTEAD)

    def attention_output_gram(self, layer) -> NoReturn:
        self._refuse("the decoder-only route engine", _ROUTES_INSTEAD)

    def neuron_output_weight(self, layer) -> NoReturn:
        self._refuse("the decoder-only route engine", _ROUTES_INSTEAD)

    def neuron_output_bias(self, layer) -> NoReturn:
        self._refuse("the decoder-only route engine", _ROUTES_INSTEAD)

    def unembed(self, residual, normalize=True) -> NoReturn:
        self._refuse("the logit lens of one prompt", _LENS_INSTEAD)

    def vocab_projection(self, vectors) -> NoReturn:
        self._refuse("promoted and suppressed tokens")

    def _refuse_run(self, instead: str) -> NoReturn:
        raise UnsupportedModelError(
            f"{self.info.name}: {self.info.architecture} is an encoder–decoder: it reads a source and writes a "
            "target, so it has no run of one prompt (the neuron view and the pages built on a run are for "
            f"decoder-only and encoder models so far); {instead} gives its three attentions, "
            f"{_ROUTES_INSTEAD}, and {_LENS_INSTEAD}"
        )

    def _refuse(self, what: str, instead: str | None = None) -> NoReturn:
        tail = f"; {instead}" if instead else ""
        raise UnsupportedModelError(
            f"{self.info.name}: {self.info.architecture} is an encoder–decoder: {what} works on decoder-only "
            f"and encoder models only so far{tail}"
        )


_ROUTES_INSTEAD = "llm_flow.seq2seq_route(run, position) its routes across the encoder and the decoder"
_LENS_INSTEAD = "llm_flow.views.seq2seq_lens.pair_logit_lens(run, kind, layer, position) the logit lens of its decoder's states"
