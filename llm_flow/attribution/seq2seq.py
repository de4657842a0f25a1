"""Attribution on encoder–decoders, as Inseq does it: every target token attributed to the
source tokens (read by the encoder) and to the target prefix before it (read by the decoder),
with step scores.

The gradient and occlusion methods are the decoder-only ones (`gradient.py`, `perturbation.py`)
run on a `Seq2SeqProblem`: its input is the source's and the decoder's input embeddings side by
side, [1, S + 1 + t, d] for step t (source, decoder start, target prefix), split again inside the
explained function. Columns of the result are the source tokens, the decoder start and the target
tokens but the last, as one `Attribution` whose first `n_source` tokens are the source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from llm_flow.attribution.base import (
    FUNCTIONS,
    Method,
    MethodOutput,
    Problem,
    Progress,
    check_choice,
    output_function,
    stack_rows,
)
from llm_flow.attribution.gradient import InputXGradient, IntegratedGradients, Saliency
from llm_flow.attribution.internals import AltiRollout, Attention
from llm_flow.attribution.perturbation import Occlusion
from llm_flow.attribution.registry import METHODS
from llm_flow.attribution.result import Attribution
from llm_flow.attribution.scores import scores_of
from llm_flow.attribution.targets import Sequence
from llm_flow.errors import ArgumentError, UnsupportedModelError
from llm_flow.models.seq2seq import Seq2SeqLlm
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.routes.seq2seq import seq2seq_contributions
from llm_flow.validation import build_named
from llm_flow.views.tokens import single_token


@dataclass(frozen=True)
class CrossAttention(Attention):
    """The cross-attention weights of one decoder layer from the position that predicts the
    target to every source token, the mean or the maximum over heads (`layer`, `heads` as for
    `Attention`). The target prefix is not scored (left empty): each row is the cross-attention's
    own distribution and sums to 1."""

    label: ClassVar[str] = "Cross-attention"
    summary: ClassVar[str] = (
        "The cross-attention weights of one decoder layer from the predicting position to the source "
        "tokens (mean or maximum over heads); no output is explained."
    )

    def compute(self, problem: Problem) -> MethodOutput:
        run = problem.run()
        n_layers = run.n_layers_of("cross")
        if not -n_layers <= self.layer < n_layers:
            raise ArgumentError(f"layer {self.layer} is out of range: the decoder has layers 0..{n_layers - 1}")
        weights = run.pattern("cross", self.layer % n_layers)  # [H, T, S]
        folded = weights.mean(0) if self.heads == "mean" else weights.max(0).values  # [T, S]
        rows = [folded[step] for step in range(problem.n_steps)]  # decoder position t predicts target t
        problem.report(problem.n_steps)
        return MethodOutput(stack_rows(rows, problem.n_sources))


@dataclass(frozen=True)
class AltiPlusRollout(AltiRollout):
    """ALTI+ (Ferrando et al. 2022, *Towards Opening the Black Box of Neural Machine
    Translation*): the exact contributions of every attention block of the encoder and the
    decoder (self and cross), rolled out into each target token's shares of the source tokens and
    the target prefix (`llm_flow.routes.seq2seq`, docs/method.md). Each row sums to 1."""

    label: ClassVar[str] = "ALTI+ rollout"
    summary: ClassVar[str] = (
        "Each source and target-prefix token's share in the state that predicts the target: ALTI "
        "contributions of the encoder, the decoder and the cross-attention, multiplied through all layers."
    )

    def compute(self, problem: Problem) -> MethodOutput:
        ids, n_source = list(problem.sequence.ids), problem.n_source
        rollout = seq2seq_contributions(problem.seq2seq, ids[:n_source], ids[n_source + 1 :]).rollout()  # [T, S + T]
        rows = [torch.from_numpy(rollout[step, : n_source + step + 1]) for step in range(problem.n_steps)]
        problem.report(problem.n_steps)
        return MethodOutput(stack_rows(rows, problem.n_sources))


#: The methods an encoder–decoder can be attributed with, by name, in the order they are offered.
SEQ2SEQ_METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (Saliency, InputXGradient, IntegratedGradients, Occlusion, CrossAttention, AltiPlusRollout)
}


@dataclass(frozen=True)
class Seq2SeqProblem(Problem):
    """A `Problem` whose sequence is the source followed by the decoder's tokens: `n_source`
    tokens for the encoder, then the decoder start and the target."""

    seq2seq: Seq2SeqLlm | None = None
    n_source: int = 0

    @property
    def device(self) -> torch.device:
        return next(self.seq2seq.hf_seq2seq.parameters()).device

    @property
    def kept_position(self) -> int:
        """The decoder start: the position a baseline leaves alone (`Problem.baseline`)."""
        return self.n_source

    def embeddings(self, ids: list[int], gradients: bool = False) -> torch.Tensor:
        with torch.no_grad():
            embeds = torch.cat([
                self.seq2seq.input_embeddings(ids[: self.n_source], "encoder"),
                self.seq2seq.input_embeddings(ids[self.n_source :], "decoder"),
            ], dim=1)  # fmt: skip
        return embeds.detach().requires_grad_(gradients)

    def baseline(self, kind: str, embeds: torch.Tensor, keep_first: bool) -> torch.Tensor:
        """As `Problem.baseline`, each side's tokens replaced by that side's baseline embedding;
        `keep_first` keeps the decoder start (the decoder's first position) instead of the
        first source token, which is a word like any other."""
        sides = (("encoder", 0, self.n_source), ("decoder", self.n_source, embeds.shape[1]))
        parts = []
        for side, start, stop in sides:
            if kind == "zeros":
                parts.append(torch.zeros_like(embeds[:, start:stop]))
                continue
            vector = self.seq2seq.baseline_embedding(kind, side)  # [d]
            parts.append(vector.expand(1, stop - start, -1).to(embeds))
        baseline = torch.cat(parts, dim=1)
        if keep_first:
            baseline[:, self.n_source] = embeds[:, self.n_source].detach()
        return baseline

    def forward(self, target_token_id: int) -> Callable[[torch.Tensor], torch.Tensor]:
        hf, function, foil, n_source = self.seq2seq.hf_seq2seq, self.function, self.foil, self.n_source

        def explained(embeds: torch.Tensor) -> torch.Tensor:
            out = hf(inputs_embeds=embeds[:, :n_source], decoder_inputs_embeds=embeds[:, n_source:], use_cache=False)
            return output_function(out.logits[:, -1].float(), target_token_id, foil, function)

        return explained

    def batch_size(self, n_tokens: int, gradients: bool) -> int:
        info = self.seq2seq.info
        size = next(self.seq2seq.hf_seq2seq.parameters()).element_size()
        per_layer = 4 * info.n_heads * n_tokens + 12 * info.d_model + 4 * info.d_mlp
        layers = info.n_layers + info.encoder_layers
        per_sample = n_tokens * per_layer * size * (layers if gradients else 1)
        return max(1, (2 << 30) // per_sample)

    def run(self) -> Seq2SeqRun:
        ids = list(self.sequence.ids)
        return self.seq2seq.run_pair_ids(ids[: self.n_source], ids[self.n_source + 1 :])


def attribute_seq2seq(
    seq2seq: Seq2SeqLlm,
    source: str,
    method: str | Method = "integrated_gradients",
    *,
    continuation: str | None = None,
    generate: int | None = None,
    foil: str | None = None,
    function: str | None = None,
    progress: Progress | None = None,
    **options: object,
) -> Attribution:
    """Which source tokens and target-prefix tokens made the encoder–decoder write each target
    token. The target is `continuation` (text) or `generate` tokens written greedily (default: up to 20).
    `method`: one of `SEQ2SEQ_METHODS` (options as keyword arguments). `function`, `foil` as in
    `llm_flow.attribution.attribute`."""
    method = seq2seq_method(seq2seq, method, options)
    if continuation is not None and generate is not None:
        raise ArgumentError("give the target text or a number of tokens to generate, not both")
    run = seq2seq.run_pair(source, continuation, max_new_tokens=20 if generate is None else generate)
    return attribute_pair(run, method, foil=foil, function=function, progress=progress)


def seq2seq_method(seq2seq: Seq2SeqLlm, method: str | Method, options: dict[str, object]) -> Method:
    """`method` (a name with its `options`, or a built method) checked to be one an
    encoder–decoder can be attributed with."""
    if isinstance(method, str):
        key = method.strip().lower().replace("-", "_")
        if key not in SEQ2SEQ_METHODS and key in METHODS:
            raise UnsupportedModelError(
                f"{seq2seq.name}: attribution method {method!r} is not available for encoder–decoders; "
                f"use one of {', '.join(SEQ2SEQ_METHODS)}"
            )
        return build_named(SEQ2SEQ_METHODS, key, method, options, "attribution method")
    if type(method) not in SEQ2SEQ_METHODS.values():
        raise UnsupportedModelError(f"{seq2seq.name}: {method.label} is not available for encoder–decoders")
    return method


def attribute_pair(
    run: Seq2SeqRun,
    method: Method,
    *,
    foil: str | None = None,
    function: str | None = None,
    progress: Progress | None = None,
) -> Attribution:
    """`attribute_seq2seq` on the very token ids of `run` (a target typed, written greedily or
    sampled): what the app explains for the pair on screen. `method` as `seq2seq_method` gives it."""
    seq2seq = run.model
    method = seq2seq_method(seq2seq, method, {})
    foil_id = single_token(seq2seq, foil) if foil is not None else None
    if function is None:
        function = "logit" if foil_id is not None else "probability"
    check_choice("function", function, FUNCTIONS)
    n_source = run.n_source
    sequence = pair_sequence(run)
    ids, generated = list(sequence.ids), sequence.generated
    explained = function if method.uses_output else None
    problem = Seq2SeqProblem(seq2seq, sequence, explained, foil_id if method.uses_output else None, progress,
                             seq2seq=seq2seq, n_source=n_source)  # fmt: skip
    output = method.compute(problem)
    special = set(seq2seq.tokenizer.all_special_ids)
    return Attribution(
        model=seq2seq.name,
        method=method.name,
        options=method.settings(),
        function=explained,
        foil=foil,
        tokens=run.source_str_tokens + run.decoder_str_tokens,
        token_ids=ids,
        special=[i in special for i in ids],
        n_prompt=n_source + 1,
        spans=[(p, p + 1) for p in range(len(ids) - 1)],
        scores=output.scores,
        step_scores=seq2seq_step_scores(run, foil_id),
        deltas=output.deltas,
        scale=method.scale,
        prompt=run.source,
        generated=generated,
        n_source=n_source,
    )


def pair_sequence(run: Seq2SeqRun) -> Sequence:
    """The run's source ids then its decoder's ids (start, target), the target's first token
    being the first explained: the `Sequence` every method of a pair works on."""
    ids = run.source_tokens.tolist() + run.decoder_tokens.tolist()
    return Sequence(tuple(ids), run.n_source + 1, prompt=run.source or "", generated=run.written)


def seq2seq_step_scores(run: Seq2SeqRun, foil: int | None = None) -> dict[str, list[float]]:
    """`step_scores` of each target token, from the decoder's logits where it wrote it."""
    return scores_of(run.logits[:-1], torch.tensor(run.target_ids), foil)  # position t predicts target t
