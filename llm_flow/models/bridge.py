"""`TransparentLlm` over TransformerLens's `TransformerBridge`, with raw (unfolded) weights.

The bridge gives uniform hook names for every architecture it supports; we hook only what the
route maths needs and store it compactly while the forward pass runs (the attention pattern is
packed to its causal triangle in the hook, so a full [H, T, T] copy per layer never accumulates).
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase

from llm_flow.errors import PromptError, UnsupportedModelError
from llm_flow.validation import check_prompt_text
from llm_flow.models.base import ModelInfo, TransparentLlm
from llm_flow.models.memory import check_run_fits, out_of_memory_as_error
from llm_flow.models.encoders import segment_inputs
from llm_flow.models.experts import ExpertRouting, MoeLayer
from llm_flow.models.fast_attention import Capture, attention_modules, capturing_attention, own
from llm_flow.models.run import CausalPattern, FullPattern, LayerActivations, Run


class BridgeLlm(TransparentLlm):
    """A loaded model. One forward pass at a time (hooks live on the shared module)."""

    def __init__(
        self,
        bridge: TransformerBridge,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        prepend_bos: bool | None = None,
        max_prompt_tokens: int | None = None,
        max_run_bytes: int | None = None,
        no_lm_head: bool = False,
        n_params: int | None = None,
    ) -> None:
        """`no_lm_head`: the checkpoint had no (masked-)LM head (a sentence encoder); predictions
        then use the input embeddings, never the randomly initialised head. `n_params`: the
        checkpoint's parameter count, taken before the bridge adds split copies of fused
        weights (GPT-2's and GPT-NeoX's qkv) to the wrapped model."""
        self._bridge = bridge.eval()
        self._tokenizer = tokenizer
        self._prepend_bos = prepend_bos
        self.max_prompt_tokens = max_prompt_tokens
        self.max_run_bytes = max_run_bytes
        self._lock = threading.Lock()
        self._grams: dict[int, torch.Tensor] = {}  # attention_output_gram, by layer
        self._grams_lock = threading.Lock()  # not `lock`: callers may hold it during a pass
        cfg = bridge.cfg
        self._parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
        self._post_norms = hasattr(bridge.blocks[0], "ln1_post")
        # Encoders the bridge wraps (BERT, RoBERTa) attend both ways and normalise after the
        # residual add; the load-time probe checks that this reading adds up.
        self._bidirectional = getattr(cfg, "attention_dir", "causal") == "bidirectional"
        self._post_ln = self._bidirectional
        self._no_lm_head = no_lm_head
        hf_config = bridge.original_model.config
        found = {layer: MoeLayer.find(block.mlp, hf_config) for layer, block in enumerate(bridge.blocks)}
        self._moe = {layer: moe for layer, moe in found.items() if moe is not None}
        self._check_supported(name)
        moe = next(iter(self._moe.values()), None)
        first_param = next(bridge.parameters())
        self.info = ModelInfo(
            name=name,
            architecture=type(bridge.original_model).__name__,
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
            d_model=cfg.d_model,
            d_head=cfg.d_head,
            d_mlp=self._moe[0].n_active if 0 in self._moe else int(self.neuron_output_weight(0).shape[0]),
            vocab_size=cfg.d_vocab,
            n_params=n_params if n_params is not None else sum(p.numel() for p in bridge.original_model.parameters()),
            n_ctx=cfg.n_ctx,
            parallel_blocks=self._parallel,
            device=str(first_param.device),
            dtype=str(first_param.dtype).removeprefix("torch."),
            post_norms=self._post_norms,
            bidirectional=self._bidirectional,
            post_ln=self._post_ln,
            no_lm_head=no_lm_head,
            n_experts=0 if moe is None else moe.n_experts,
            experts_per_token=0 if moe is None else moe.experts_per_token,
        )

    @property
    def recomputed_rows(self) -> bool:
        """Rows rebuilt from kept queries and keys, on a pass with fast attention; the load-time
        probe turns it on where that reproduces the eager pattern (probe.choose_row_storage)."""
        return self.info.recomputed_rows

    @recomputed_rows.setter
    def recomputed_rows(self, on: bool) -> None:
        self.info = dataclasses.replace(self.info, recomputed_rows=on)

    # --- the underlying modules ---------------------------------------------------------------

    @property
    def bridge(self) -> TransformerBridge:
        """The TransformerLens bridge, for hooks on the forward pass (interventions)."""
        return self._bridge

    @property
    def hf_model(self) -> torch.nn.Module:
        """The plain `transformers` model the bridge wraps, for gradients and generation."""
        return self._bridge.original_model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    @property
    def lock(self) -> threading.Lock:
        """Held during any pass over the shared modules: hooks must not mix between callers."""
        return self._lock

    # --- tokens -------------------------------------------------------------------------------

    def encode(self, prompt: str) -> list[int]:
        ids = list(self._tokenizer(prompt, add_special_tokens=True)["input_ids"])
        bos = self._tokenizer.bos_token_id
        if bos is None:
            return ids
        if self._prepend_bos is True and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        elif self._prepend_bos is False and ids and ids[0] == bos:
            ids.pop(0)
        return ids

    def decode_tokens(self, token_ids: list[int] | torch.Tensor) -> list[str]:
        ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
        return self._tokenizer.batch_decode(
            [[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def _validated_ids(self, prompt: str) -> list[int]:
        return self._check_length(self.encode(check_prompt_text(prompt)))

    def _check_length(self, ids: list[int]) -> list[int]:
        self.check_length(len(ids))
        if not ids:
            raise PromptError("the prompt produced no tokens")
        return ids

    # --- the forward pass ---------------------------------------------------------------------

    @contextmanager
    def layer_progress(self, report: Callable[[int, int], None]) -> Iterator[None]:
        caller = threading.get_ident()

        def after_block(layer: int):
            def hook(module, args, output) -> None:
                if threading.get_ident() == caller:
                    report(layer + 1, self.info.n_layers)

            return hook

        handles = [block.register_forward_hook(after_block(layer)) for layer, block in enumerate(self._bridge.blocks)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def run(self, prompt: str) -> Run:
        return self._run(self._validated_ids(prompt), prompt)

    def run_ids(self, token_ids: list[int], prompt: str | None = None) -> Run:
        """A Run over token ids as given: a prompt followed by generated tokens, or a chat
        template, must not be decoded and re-tokenised (the split could change)."""
        ids = self._check_length([int(i) for i in token_ids])
        return self._run(ids, self._tokenizer.decode(ids) if prompt is None else prompt)

    def _run(self, ids: list[int], prompt: str) -> Run:
        """Refused before the pass if it would not fit in memory; an allocation failure during it
        becomes a MemoryLimitError."""
        check_run_fits(self.info, len(ids), self.max_run_bytes)
        with out_of_memory_as_error(self.info, len(ids)):
            return self._forward(prompt, ids)

    def _forward(self, prompt: str, ids: list[int]) -> Run:
        device = next(self._bridge.parameters()).device
        tokens = torch.tensor(ids, dtype=torch.long, device=device)
        store: dict[str, object] = {}
        routed: dict[int, dict[str, torch.Tensor]] = {layer: {} for layer in self._moe}
        handles = [handle for layer, moe in self._moe.items() for handle in moe.capture(routed[layer])]
        try:
            with self._lock, torch.inference_mode(), self.rows_pass() as capture:
                # the Run keeps no logits (Run.position_logits): the head runs on the last token only
                self._bridge.run_with_hooks(
                    tokens[None], fwd_hooks=self._hooks(store), return_type=None, **self._last_logits_only(),
                    **self.segments(ids, device),
                )  # fmt: skip
                for layer, moe in self._moe.items():
                    store[f"{layer}.neuron_acts"], store[f"{layer}.experts"] = moe.activations(routed[layer])
        finally:
            for handle in handles:
                handle.remove()
        if self.recomputed_rows:
            missing = [layer for layer in range(self.info.n_layers) if layer not in capture.patterns]
            if missing:
                raise UnsupportedModelError(
                    f"{self.name}: layer {missing[0]}'s attention did not go through the attention "
                    "function whose queries and keys llm-flow keeps"
                )
            for layer in range(self.info.n_layers):
                store[f"blocks.{layer}.attn.hook_v"] = capture.values[layer]
                store[f"blocks.{layer}.attn.hook_pattern"] = capture.patterns[layer]
        layers = tuple(self._layer_activations(store, layer) for layer in range(self.info.n_layers))
        return Run(model=self, prompt=prompt, tokens=tokens, str_tokens=self.decode_tokens(ids), layers=layers)

    def _last_logits_only(self) -> dict[str, int]:
        """``logits_to_keep=1`` where the model takes it (causal LMs): no [T, vocab] in the pass."""
        accepts = "logits_to_keep" in inspect.signature(self.hf_model.forward).parameters
        return {"logits_to_keep": 1} if accepts else {}

    def _hooks(self, store: dict[str, object]) -> list[tuple[str, Callable]]:
        """One storing hook per name; the key is the name we asked for (some are aliases). With
        recomputed rows, the values and patterns come from the capturing attention instead."""

        def storing(name: str) -> Callable:
            def hook(tensor: torch.Tensor, hook) -> None:
                batchless = tensor[0]
                if name.endswith("hook_pattern"):
                    store[name] = FullPattern(batchless) if self._bidirectional else CausalPattern(batchless)
                elif (previous := _previous_output(store, name)) is not None and torch.equal(previous, batchless):
                    store[name] = previous  # a block's input is the last one's output: kept once
                elif self.recomputed_rows:  # the fresh tensor itself; the load-time probe checks
                    store[name] = own(batchless)  # (against the cloning pass) that nothing edits it later
                else:
                    store[name] = batchless.clone()

            return hook

        captured = ("attn.hook_v", "attn.hook_pattern") if self.recomputed_rows else ()
        return [(name, storing(name)) for name in self._hook_names() if not name.endswith(captured)]

    @contextmanager
    def rows_pass(self) -> Iterator[Capture | None]:
        if not self.recomputed_rows:
            with self.no_kept_patterns():
                yield None
            return
        attention = [block.attn for block in self._bridge.blocks]
        capture = Capture(attention_modules(attention), causal=not self._bidirectional)
        with capturing_attention(self.hf_model, attention, capture, self._unread_norms()):
            yield capture

    def _unread_norms(self) -> list[torch.nn.Module]:
        """Norm bridges whose scale nothing reads: all of them, unless the model has post-norms or
        post-LN blocks (their scales give the gains, docs/method.md#post-norms)."""
        if self._post_norms or self._post_ln:
            return []
        found = [getattr(block, name, None) for block in self._bridge.blocks for name in ("ln1", "ln2")]
        found.append(getattr(self._bridge, "ln_final", None))
        return [norm for norm in found if isinstance(norm, NormalizationBridge)]

    @contextmanager
    def no_kept_patterns(self) -> Iterator[None]:
        """Drop the full [1, H, T, T] pattern some TransformerLens attention bridges keep on the
        module (``_pattern``) as soon as that module returns: we keep the packed copy, and L of
        them would otherwise pile up during the pass (9.7 GB for GPT-2 small at T = 4096).
        Wrap any other hooked pass over the bridge in it too."""

        def drop(module: torch.nn.Module, args, output) -> None:
            if getattr(module, "_pattern", None) is not None:
                module._pattern = None

        handles = [block.attn.register_forward_hook(drop) for block in self._bridge.blocks]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def segments(self, ids: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        if not self._bidirectional:
            return {}
        return segment_inputs(self.hf_model.config, self._tokenizer.sep_token_id, ids, device)

    def _hook_names(self) -> list[str]:
        names = []
        for layer in range(self._bridge.cfg.n_layers):
            names += list(self._layer_hooks(layer).values())
        return names

    def _layer_hooks(self, layer: int) -> dict[str, str]:
        """Which hook holds each activation of `layer`. Post-LN blocks (BERT) take the states
        from their norms: TransformerLens's ``hook_resid_mid`` there is not the state after
        attention, and the FFN is not one module, so its ``hook_post`` never fires."""
        block = f"blocks.{layer}"
        hooks = {
            "resid_pre": f"{block}.hook_resid_pre",
            "resid_post": f"{block}.hook_resid_post",
            "values": f"{block}.attn.hook_v",
            "pattern": f"{block}.attn.hook_pattern",
            "mlp_out": f"{block}.hook_mlp_out",
            "neuron_acts": f"{block}.mlp.hook_post",
        }
        if layer in self._moe:  # read from the experts module itself (llm_flow/models/experts.py)
            del hooks["neuron_acts"]
        if self._post_ln:
            hooks |= {
                "resid_mid": f"{block}.ln1.hook_out",
                "neuron_acts": f"{block}.mlp.out.hook_in",
                "attn_scale": f"{block}.ln1.hook_scale",
                "mlp_scale": f"{block}.ln2.hook_scale",
            }
        elif not self._parallel:
            hooks["resid_mid"] = f"{block}.hook_resid_mid"
        if self._post_norms:
            hooks |= {"attn_scale": f"{block}.ln1_post.hook_scale", "mlp_scale": f"{block}.ln2_post.hook_scale"}
        return hooks

    def _layer_activations(self, store: dict[str, object], layer: int) -> LayerActivations:
        held = {key: store[name] for key, name in self._layer_hooks(layer).items()}
        if layer in self._moe:
            held |= {"neuron_acts": store[f"{layer}.neuron_acts"], "experts": store[f"{layer}.experts"]}
        attn_gain = mlp_gain = None
        if self._post_norms or self._post_ln:
            first, second = ("ln1", "ln2") if self._post_ln else ("ln1_post", "ln2_post")
            attn_gain = self.post_norm_gain(layer, first, held.pop("attn_scale"))
            mlp_gain = self.post_norm_gain(layer, second, held.pop("mlp_scale"))
        return LayerActivations(**{"resid_mid": None, **held}, attn_gain=attn_gain, mlp_gain=mlp_gain)

    def post_norm_gain(self, layer: int, norm: str, scale: torch.Tensor) -> torch.Tensor:
        """RMSNorm(x) = x ⊙ w / rms(x): with rms fixed by the whole, it is linear in the parts
        (docs/method.md#post-norms); so is LayerNorm's x ↦ w ⊙ (x − mean x) / σ once σ is fixed
        (docs/method.md#encoders; the centering is applied to the parts themselves)."""
        weight = getattr(self._bridge.blocks[layer], norm).original_component.weight.float()
        if getattr(self._bridge.cfg, "rmsnorm_uses_offset", False):
            weight = 1.0 + weight
        return weight / scale.float()  # [T, d] = [d] / [T, 1]

    # --- generation ---------------------------------------------------------------------------

    def generate_ids(
        self, token_ids: list[int], max_new_tokens: int, last_processor: LogitsProcessor, eos_ids: frozenset[int]
    ) -> list[int]:
        hf = self.hf_model
        inputs = torch.tensor([token_ids], dtype=torch.long, device=next(hf.parameters()).device)
        eos = sorted(eos_ids) or None
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else (eos or [0])[0]
        with self._lock, torch.inference_mode(), self._cache_reaches_the_attention():
            out = hf.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=max_new_tokens,
                # Greedy over what the processor leaves; the model's own sampling settings and
                # repetition penalty (Qwen2.5's generation config has 1.05) would act before it.
                do_sample=False, temperature=None, top_k=None, top_p=None, repetition_penalty=1.0,
                logits_processor=LogitsProcessorList([last_processor]),
                eos_token_id=eos,
                pad_token_id=pad,
            )  # fmt: skip
        return out[0, len(token_ids) :].tolist()

    @contextmanager
    def _cache_reaches_the_attention(self) -> Iterator[None]:
        """Hand the KV cache to the bridge's attention modules under the name they read.

        transformers 5.24 renamed the keyword that carries the cache from ``past_key_values`` to
        ``cache``; TransformerLens 4.3's attention bridges still look for ``past_key_values`` (or
        ``layer_past``), so without this every generated token after the first attended to itself
        alone (SmolLM2: "Paris-----" instead of "Paris.\n\nThe answer")."""

        def with_cache(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
                kwargs["past_key_values"] = kwargs["cache"]
            return args, kwargs

        handles = [block.attn.register_forward_pre_hook(with_cache, with_kwargs=True) for block in self._bridge.blocks]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # --- weights ------------------------------------------------------------------------------

    def attention_output_weight(self, layer: int) -> torch.Tensor:
        return self._bridge.blocks[layer].attn.W_O.detach()

    def attention_output_bias(self, layer: int) -> torch.Tensor | None:
        bias = self._bridge.blocks[layer].attn.b_O
        return None if bias is None else bias.detach()

    def attention_output_gram(self, layer: int) -> torch.Tensor:
        with self._grams_lock:
            if layer not in self._grams:
                w_o = self.attention_output_weight(layer).double()  # [H, d_head, d_model]
                self._grams[layer] = (w_o @ w_o.transpose(1, 2)).float()
            return self._grams[layer]

    def neuron_output_weight(self, layer: int) -> torch.Tensor:
        if layer in self._moe:
            raise UnsupportedModelError(
                f"{self.name}: layer {layer} is a mixture of experts; its neurons depend on each "
                "token's experts (active_neuron_weights)"
            )
        return self._bridge.blocks[layer].mlp.W_out.detach()

    def active_neuron_weights(self, layer: int, routing: ExpertRouting, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A mixture-of-experts layer: W_out rows of the neurons `position` used [n, d] and each
        row's router weight (or shared gate) [n] (llm_flow/models/experts.py)."""
        return self._moe[layer].output_weights(routing, position)

    def neuron_output_bias(self, layer: int) -> torch.Tensor | None:
        bias = getattr(self._bridge.blocks[layer].mlp, "b_out", None)
        return None if bias is None else bias.detach()

    def unembed(self, residual: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """For a masked-LM encoder, "the final norm" is its whole prediction head (dense,
        activation, LayerNorm); without a head, the input embeddings (docs/method.md#encoders)."""
        with torch.inference_mode():
            if self._no_lm_head:
                return self.vocab_projection(residual)
            x = residual.to(self._bridge.W_U.dtype)
            if normalize and self._bidirectional:
                return _masked_lm_head(self.hf_model)(x).float()
            if normalize:
                x = self._bridge.ln_final(x)
            logits = (x @ self._bridge.W_U + self._bridge.b_U).float()
            logits = logits * float(getattr(self._bridge.cfg, "logit_scale", None) or 1.0)  # Cohere
            cap = float(getattr(self._bridge.cfg, "output_logits_soft_cap", -1.0) or -1.0)
            return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def vocab_projection(self, vectors: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self._no_lm_head:
                embeddings = self.hf_model.get_input_embeddings().weight  # [vocab, d]
                return (vectors.to(embeddings.dtype) @ embeddings.T).float()
            return (vectors.to(self._bridge.W_U.dtype) @ self._bridge.W_U).float()

    def post_ln_bias(self, layer: int, norm: str) -> torch.Tensor:
        """β of a post-LN block's LayerNorm ("ln1" after attention, "ln2" after the FFN): it
        enters the state and belongs to no part (docs/method.md#encoders)."""
        return getattr(self._bridge.blocks[layer], norm).original_component.bias.detach().float()

    # --- support check ------------------------------------------------------------------------

    def _check_supported(self, name: str) -> None:
        """Fail at load time, with the reason, for models the maths cannot decompose exactly."""
        arch = type(self._bridge.original_model).__name__
        missing = [n for n in self._hook_names() if n not in self._bridge.hook_dict]
        if missing:
            raise UnsupportedModelError(
                f"{name}: llm-flow cannot trace this architecture ({arch}); TransformerLens exposes "
                f"no {missing[0]!r} hook for it (e.g. a state-space or recurrent block, or non-standard attention)"
            )
        dense = (block.mlp for layer, block in enumerate(self._bridge.blocks) if layer not in self._moe)
        if not all(_has_output_projection(mlp) for mlp in dense):
            raise UnsupportedModelError(
                f"{name}: {arch} is a mixture-of-experts model whose experts llm-flow cannot read "
                "(it reads experts stored as gate_up_proj/down_proj, as in Mixtral, Qwen2/3-MoE "
                "and OLMoE)"
            )
        if self._post_norms and self._bridge.cfg.normalization_type != "RMS":
            raise UnsupportedModelError(
                f"{name}: post-block LayerNorm is not supported (only RMSNorm post-norms, as in Gemma)"
            )


def _previous_output(store: dict[str, object], name: str) -> torch.Tensor | None:
    """For ``blocks.{l}.hook_resid_pre`` (l > 0): the stored ``hook_resid_post`` of block l - 1."""
    prefix, _, hook = name.rpartition(".")
    layer = int(prefix.removeprefix("blocks.")) if hook == "hook_resid_pre" and prefix.startswith("blocks.") else 0
    found = store.get(f"blocks.{layer - 1}.hook_resid_post") if layer > 0 else None
    return found if isinstance(found, torch.Tensor) else None


def _has_output_projection(mlp: torch.nn.Module) -> bool:
    """Whether the FFN bridge exposes one W_out (a mixture of experts has one per expert)."""
    try:
        return mlp.W_out is not None
    except AttributeError:
        return False


def _masked_lm_head(hf_model: torch.nn.Module) -> torch.nn.Module:
    """The prediction head of a masked-LM encoder: ``cls`` (BERT) or ``lm_head`` (RoBERTa)."""
    for name in ("cls", "lm_head"):
        if hasattr(hf_model, name):
            return getattr(hf_model, name)
    raise UnsupportedModelError(f"{type(hf_model).__name__} has no masked-LM head llm-flow knows (cls or lm_head)")
