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
# Largest error allowed, relative to the largest value of the state compared (float32 sums of a
# few hundred parts stay within 1e-5 of it; half precision within 1e-2).
_TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 5e-2}


def check_parts_add_up(model: TransparentLlm) -> None:
    """Refuse (UnsupportedModelError) a model whose decomposition does not reconstruct its states."""
    # within the configured prompt limit, which is the user's to set (one token still checks
    # every identity but the mask)
    length = max(1, min(PROBE_TOKENS, model.token_limit()[0]))
    run = model.run_ids(model.encode(PROBE)[:length], prompt=PROBE)
    failure = first_mismatch(run, _TOLERANCE.get(model.info.dtype, 5e-2))
    if failure is not None:
        raise UnsupportedModelError(
            f"{model.name}: llm-flow cannot decompose {model.info.architecture} exactly: {failure}. "
            "TransformerLens's adapter for this architecture does not expose the residual stream as "
            "the model computes it, so its routes would be wrong; llm-flow refuses it"
        )


def first_mismatch(run: Run, tolerance: float) -> str | None:
    """The first identity of the decomposition that `run` breaks, said in words; None if none."""
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
    final = run.layer(run.n_layers - 1).resid_post
    problem = _compare(run.logits, run.model.unembed(final), tolerance)
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
