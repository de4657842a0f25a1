"""Anatomy of one prediction: the residual stream of one position, layer by layer.

For position ``i`` and the token it is asked to explain (by default the model's prediction):

* ``norm``: the L2 norm of the residual after the layer, ``||resid_post[l][i]||`` (the embedding
  row: ``||resid_pre[0][i]||``);
* ``attention``, ``ffn``, ``residual``: the shares of ``resid_post[l][i]`` that came from this
  layer's attention heads (all sources, all heads), its FFN, and the residual stream that entered
  the layer. They sum to 1. Sequential blocks compose the two ALTI normalisations along the
  residual path: with ``c_heads, c_res`` of ``resid_mid`` and ``c_ffn, c_res2`` of
  ``resid_post``, attention = ``c_res2[i] * Σ_{j,h} c_heads[i, j, h]``, residual =
  ``c_res2[i] * c_res[i]``, FFN = ``c_ffn[i]``. Parallel blocks normalise once, so the shares are
  the contributions themselves. ``heads`` splits the attention share per head.
* the logit lens of ``resid_post[l][i]`` (final norm and unembedding): its top token, and the
  explained token's rank (1 = top) and probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from llm_flow.errors import ArgumentError
from llm_flow.models.run import Run
from llm_flow.routes.contributions import contribution_rows, ffn_contributions
from llm_flow.routes.nodes import NodeId
from llm_flow.views.tokens import ranks


@dataclass(frozen=True)
class LayerAnatomy:
    layer: int  # -1: the token embedding
    node: str  # route-graph id of the residual state: X_i or I{l}_i
    norm: float
    attention: float | None  # None for the embedding row
    ffn: float | None
    residual: float | None
    heads: tuple[float, ...]  # per-head split of `attention` (empty for the embedding row)
    lens_token: str
    lens_token_id: int
    lens_probability: float
    target_rank: int
    target_probability: float


@dataclass(frozen=True)
class Anatomy:
    position: int
    token: str  # the input token at `position`
    target_id: int  # the token explained: what `position` predicts
    target: str
    parallel: bool
    rows: tuple[LayerAnatomy, ...]  # embedding first, then every layer

    @property
    def layers(self) -> tuple[LayerAnatomy, ...]:
        return self.rows[1:]


@dataclass(frozen=True)
class AnatomyOf:
    """Key of an anatomy in a Run's derived store: the arguments `anatomy` took."""

    position: int  # non-negative
    target_id: int | None
    normalize: bool


def shared_anatomy(run: Run, position: int = -1, target_id: int | None = None, normalize: bool = True) -> Anatomy:
    """`anatomy`, kept with the Run (pages redraw it on every rerun, for every session)."""
    position = run.position(position)
    return run.derived(AnatomyOf(position, target_id, normalize), partial(anatomy, run, position, target_id, normalize))


def anatomy(run: Run, position: int = -1, target_id: int | None = None, normalize: bool = True) -> Anatomy:
    """The anatomy of the prediction at `position`, explaining `target_id` (default: the top token)."""
    position = run.position(position)
    model = run.model
    if target_id is None:
        target_id = int(torch.argmax(run.position_logits(position)))
    elif not 0 <= target_id < run.model.info.vocab_size:
        raise ArgumentError(f"token id {target_id} is not in the vocabulary (0..{run.model.info.vocab_size - 1})")
    states = torch.stack(
        [run.layers[0].resid_pre[position], *(act.resid_post[position] for act in run.layers)]
    ).float()  # [L + 1, d]
    lens = model.unembed(states, normalize=normalize)  # [L + 1, V]
    probs = torch.softmax(lens, -1)
    top = lens.argmax(-1).tolist()
    target_ranks = [ranks(row, [target_id])[0] for row in lens]  # [L + 1], from 1
    top_tokens = model.decode_tokens(top)
    norms = states.norm(dim=-1).tolist()
    rows = []
    for k in range(run.n_layers + 1):
        layer = k - 1
        shares = (None, None, None, ()) if layer < 0 else _shares(run, layer, position)
        rows.append(
            LayerAnatomy(
                layer=layer,
                node=str(NodeId("X", -1, position) if layer < 0 else NodeId("I", layer, position)),
                norm=norms[k],
                attention=shares[0],
                ffn=shares[1],
                residual=shares[2],
                heads=shares[3],
                lens_token=top_tokens[k],
                lens_token_id=top[k],
                lens_probability=float(probs[k, top[k]]),
                target_rank=target_ranks[k],
                target_probability=float(probs[k, target_id]),
            )
        )
    token, target = model.decode_tokens([int(run.tokens[position]), target_id])
    return Anatomy(position, token, target_id, target, run.parallel, tuple(rows))


def _shares(run: Run, layer: int, position: int) -> tuple[float, float, float, tuple[float, ...]]:
    """(attention, FFN, residual, per-head attention) shares of ``resid_post[layer][position]``."""
    row = contribution_rows(run, layer, [position])[0]
    heads = row.heads.sum(0)  # [H] over sources
    if run.parallel:
        carried = 1.0
        ffn = float(row.ffn)
        residual = row.residual
    else:
        c_ffn, c_res2 = ffn_contributions(run, layer)
        carried = float(c_res2[position])
        ffn = float(c_ffn[position])
        residual = carried * row.residual
    heads = heads * carried
    return float(heads.sum()), ffn, residual, tuple(heads.tolist())
