"""The check, once per load, that a model's parts add up to its residual stream.

Routes are only as right as the decomposition under them: every attention node must be its
residual plus its head parts plus the biases, every FFN node its residual plus its neurons, each
layer must start where the previous one ended, and the logits must be the last state through the
final norm and unembedding. TransformerLens adapters are known to break some of these identities
for some architectures (a hook on the wrong module, a norm applied twice), and a broken identity
draws wrong routes without any error. A short probe prompt through the loaded model catches it
before the first real prompt, for a few milliseconds. A few tokens rather than one: with one
token every attention pattern is 1, and a wrong mask could not show.
"""

from __future__ import annotations

import torch

from llm_flow.errors import UnsupportedModelError
from llm_flow.models.base import TransparentLlm
from llm_flow.models.run import Run

PROBE = "The cat sat on the mat because it was tired."
PROBE_TOKENS = 4
# Rows rebuilt from queries and keys are compared with the eager pattern on a few more tokens
ROW_PROBE_TOKENS = 8
# Largest error allowed, relative to the largest value of the state compared (float32 sums of a
# few hundred parts stay within 1e-5 of it; half precision within 1e-2).
_TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 5e-2}


def check_parts_add_up(model: TransparentLlm) -> None:
    """Refuse (UnsupportedModelError) a model whose decomposition does not reconstruct its states."""
    ids = _probe_ids(model, PROBE_TOKENS)
    run = model.run_ids(ids, prompt=PROBE)
    failure = first_mismatch(run, _tolerance(model), None if model.info.no_lm_head else model_logits(model, ids))
    if failure is not None:
        raise UnsupportedModelError(
            f"{model.name}: llm-flow cannot decompose {model.info.architecture} exactly: {failure}. "
            "TransformerLens's adapter for this architecture does not expose the residual stream as "
            "the model computes it, so its routes would be wrong; llm-flow refuses it"
        )


def _probe_ids(model: TransparentLlm, n_tokens: int) -> list[int]:
    # within the configured prompt limit, which is the user's to set (one token still checks
    # every identity but the mask)
    return model.encode(PROBE)[: max(1, min(n_tokens, model.token_limit()[0]))]


def _tolerance(model: TransparentLlm) -> float:
    return _TOLERANCE.get(model.info.dtype, 5e-2)


def model_logits(model: TransparentLlm, ids: list[int]) -> torch.Tensor:
    """The model's own logits for `ids` by its plain forward pass: [T, vocab] float32."""
    hf = model.hf_model
    with model.lock, torch.inference_mode():
        return hf(torch.tensor([ids], device=next(hf.parameters()).device)).logits[0].float()


def choose_row_storage(model: TransparentLlm) -> str | None:
    """Turn on rows rebuilt from queries and keys (`model.recomputed_rows`) when, on a probe
    prompt, that pass gives the states and every attention row of the eager pass with stored
    patterns; else leave the stored patterns on and say why (the reason is returned)."""
    ids = _probe_ids(model, ROW_PROBE_TOKENS)
    stored = model.run_ids(ids, prompt=PROBE)
    model.recomputed_rows = True
    try:
        failure = _differences(stored, model.run_ids(ids, prompt=PROBE), _tolerance(model))
    except Exception as exc:  # an attention module this pass cannot drive: keep stored patterns
        failure = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if failure is not None:
        model.recomputed_rows = False
    return failure


def _differences(stored: Run, recomputed: Run, tolerance: float) -> str | None:
    """The first state or attention row where the two passes differ, in words; None if none."""
    for layer, (a, b) in enumerate(zip(stored.layers, recomputed.layers)):
        pairs = [("resid_pre", a.resid_pre, b.resid_pre), ("resid_post", a.resid_post, b.resid_post),
                 ("values", a.values, b.values), ("neuron_acts", a.neuron_acts, b.neuron_acts),
                 ("pattern", a.pattern.dense(), b.pattern.dense())]  # fmt: skip
        if a.resid_mid is not None:
            pairs.append(("resid_mid", a.resid_mid, b.resid_mid))
        for what, expected, actual in pairs:
            problem = _compare(expected, actual, tolerance)
            if problem:
                return f"layer {layer}'s {what} differs ({problem})"
    return None


def first_mismatch(run: Run, tolerance: float, logits: torch.Tensor | None = None) -> str | None:
    """The first identity of the decomposition that `run` breaks, said in words; None if none.
    `logits`: the model's own [T, vocab], which the last state must give through the final norm
    and unembedding."""
    # routes/ imports models/ (the Run); importing it at module level here would be circular
    from llm_flow.routes.contributions import attention_parts, ffn_parts

    for layer in range(run.n_layers):
        act = run.layer(layer)
        if layer > 0:
            problem = _compare(act.resid_pre, run.layer(layer - 1).resid_post, tolerance)
            if problem:
                return f"layer {layer} does not start from layer {layer - 1}'s output ({problem})"
        for position in range(run.n_tokens):
            parts = attention_parts(run, layer, position)
            rebuilt = parts.residual + parts.pieces.sum((0, 1)) + parts.bias
            if parts.ffn is not None:
                rebuilt = rebuilt + parts.ffn
            problem = _compare(parts.whole, rebuilt, tolerance)
            if problem:
                return f"layer {layer}'s attention parts do not add up at token {position} ({problem})"
            parts = ffn_parts(run, layer, position)
            if act.resid_mid is not None:
                problem = _compare(parts.whole, parts.residual + parts.ffn + parts.norm_bias, tolerance)
                if problem:
                    return f"layer {layer}'s FFN output is not what it added to the residual at token {position} ({problem})"
            problem = _compare(parts.whole, parts.residual + parts.pieces.sum(0) + parts.bias, tolerance)
            if problem:
                return f"layer {layer}'s FFN neurons do not add up at token {position} ({problem})"
    problem = None if logits is None else _compare(logits, run.logits, tolerance)
    if problem:
        return f"the logits are not the last layer's output through the final norm and unembedding ({problem})"
    return None


def _compare(expected: torch.Tensor, actual: torch.Tensor, tolerance: float) -> str | None:
    expected, actual = expected.float(), actual.float()
    scale = float(expected.abs().max()) + 1.0
    error = float((expected - actual).abs().max())
    if error <= tolerance * scale:  # also False for NaN
        return None
    return f"off by {error:.3g} where values reach {scale - 1.0:.3g}"
