"""Route graphs across the two stacks of an encoder–decoder (docs/method.md#routes-across-the-two-stacks).

The graph explains the decoder's final state at one decoder position (the state that predicts
the next target token). Its nodes are named with their stack (:mod:`llm_flow.routes.nodes`):

* decoder, per layer ``l`` and position ``t``: ``dec:A{l}_t`` (after self-attention),
  ``dec:C{l}_t`` (after cross-attention), ``dec:M{l}_t`` (the FFN block), ``dec:I{l}_t`` (after
  the layer); ``dec:X_t`` the decoder's embedding of token ``t``;
* encoder, per layer ``l`` and source position ``s``: ``enc:A{l}_s``, ``enc:M{l}_s``,
  ``enc:I{l}_s`` and ``enc:X_s``, as in an encoder's graph.

Edges are those of a decoder's graph (kinds ``attention``, ``residual``, ``ffn``), plus
``cross`` edges ``enc:I{L_e-1}_s -> dec:C{l}_t`` from the encoder's final state of source token
``s`` (the encoder's final norm is a function of that one state, as the decoder's is before the
unembedding) carrying ``c^x_l[t, s]``, with the per-head split in ``heads``; and the residual
``dec:A{l}_t -> dec:C{l}_t``. Every node's incoming edges are its parts: thresholded and
renormalised per node as in :mod:`llm_flow.routes.graph`, walked top-down from
``dec:I{L_d-1}_target``, and on down the encoder from the final states the cross edges reach.
"""

from __future__ import annotations

from functools import partial

import networkx as nx
import numpy as np
import torch

from llm_flow.errors import ArgumentError
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.routes.contributions import RowContributions
from llm_flow.routes.graph import RouteOf, _add_edge, _add_node, _attention_edges, _sequential_layer, apply_threshold
from llm_flow.routes.nodes import NodeId
from llm_flow.routes.seq2seq import BlockContributions, FfnContributions, Seq2SeqContributions, run_contributions
from llm_flow.validation import DEFAULT_THRESHOLD, check_threshold
from llm_flow.wording import plural


def seq2seq_route(
    run: Seq2SeqRun, target: int, threshold: float = DEFAULT_THRESHOLD, renormalize: bool = True
) -> nx.DiGraph:
    """The route graph that explains the decoder's state at decoder position `target` of an
    encoder–decoder `run`: the state that predicts target token `target` (position 0 reads the
    start token; the last position predicts what follows the target). Negative positions count
    from the end. The contributions are computed once per run and shared by every route on it."""
    threshold = check_threshold(threshold)
    position = decoder_position(run, target)
    return seq2seq_route_graph(
        run_contributions(run), run.source_str_tokens, run.decoder_str_tokens, position, threshold, renormalize,
        model=run.model.name, source_text=run.source, target_text=run.target,
    )  # fmt: skip


def shared_seq2seq_route(
    run: Seq2SeqRun, target: int, threshold: float = DEFAULT_THRESHOLD, renormalize: bool = True
) -> nx.DiGraph:
    """`seq2seq_route`, kept with the run (as `llm_flow.routes.graph.shared_graph` keeps a
    decoder's): for pages that show the same route on every rerun and to every session. Shared,
    so never modify it."""
    threshold = check_threshold(threshold)
    position = decoder_position(run, target)
    return run.derived(RouteOf(position, threshold, renormalize), partial(seq2seq_route, run, position, threshold, renormalize))


def decoder_position(run: Seq2SeqRun, target: int) -> int:
    """`target` as a non-negative decoder position, or a clear error when it is not one."""
    n = run.n_decoder
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not -n <= target < n:
        raise ArgumentError(
            f"target position {target!r} is out of range: the decoder reads {plural(n, 'token')} (the start "
            f"token and {plural(n - 1, 'target token')}); use 0..{n - 1}, where position t predicts target "
            f"token t, or -1 for the last"
        )
    return int(target) % n


def default_decoder_position(run: Seq2SeqRun) -> int:
    """The decoder position that predicts the last target token before the end-of-sequence token
    (the last word of a translation, rather than its end): what to explain when nobody chose."""
    eos = run.model.tokenizer.eos_token_id
    ids = run.decoder_tokens.tolist()
    for position in reversed(range(len(ids) - 1)):
        if ids[position + 1] != eos:
            return position
    return len(ids) - 2


def seq2seq_route_graph(
    contributions: Seq2SeqContributions,
    source_tokens: list[str],
    decoder_tokens: list[str],
    target: int,
    threshold: float,
    renormalize: bool,
    **graph_attrs,
) -> nx.DiGraph:
    """Walk top-down from ``dec:I{L_d-1}_target`` through the decoder, then through the encoder
    from the source tokens the cross edges reach; `target` is a non-negative decoder position."""
    threshold = check_threshold(threshold)
    decoder = _Stack(contributions.decoder_self, contributions.decoder_ffn, decoder_tokens, causal=True)
    encoder = _Stack(contributions.encoder, contributions.encoder_ffn, source_tokens, causal=False)
    graph = nx.DiGraph(
        tokens=list(decoder_tokens), source_tokens=list(source_tokens), target=target, threshold=threshold,
        renormalize=renormalize, n_layers=decoder.n_layers, encoder_layers=encoder.n_layers,
        n_tokens=len(decoder_tokens), n_source=len(source_tokens), parallel=False, encoder_decoder=True,
        **graph_attrs,
    )  # fmt: skip
    _add_node(graph, decoder, NodeId("I", decoder.n_layers - 1, target, "decoder"))
    frontier, reached = [target], set()
    for layer in reversed(range(decoder.n_layers)):
        frontier = _decoder_layer(graph, decoder, encoder, contributions.cross[layer], layer, frontier,
                                  threshold, renormalize, reached)  # fmt: skip
    frontier = sorted(reached)
    for layer in reversed(range(encoder.n_layers)):
        if not frontier:
            break
        frontier = _sequential_layer(graph, encoder, layer, frontier, threshold, renormalize, stack="encoder")
    return graph


class _Stack:
    """One stack's contributions, read the way the decoder-only walker reads a Run's."""

    parallel = False

    def __init__(
        self, blocks: list[BlockContributions], ffns: list[FfnContributions], str_tokens: list[str], causal: bool
    ) -> None:
        self.blocks, self.ffns, self.str_tokens, self.causal = blocks, ffns, list(str_tokens), causal
        self.n_layers = len(blocks)

    def attention_rows(self, layer: int, positions: list[int]) -> list[RowContributions]:
        """Rows over the positions a query reads: its prefix in the decoder, all in the encoder."""
        block = self.blocks[layer]
        return [
            RowContributions(p, torch.from_numpy(block.heads[p, : p + 1 if self.causal else None]),
                             float(block.residual[p]), None)  # fmt: skip
            for p in positions
        ]

    def ffn(self, layer: int, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.ffns[layer].ffn[positions]), torch.from_numpy(self.ffns[layer].residual[positions])


def _decoder_layer(
    graph, decoder: _Stack, encoder: _Stack, cross: BlockContributions, layer: int, positions: list[int],
    threshold: float, renormalize: bool, reached: set[int],
) -> list[int]:  # fmt: skip
    """Edges into the kept ``dec:I{layer}_t``, the ``dec:C{layer}_t`` those reach (cross edges
    from the encoder's final states, whose positions join `reached`), then the ``dec:A{layer}_t``;
    returns the decoder positions of the layer input the self-attention edges reach."""
    c_ffn, c_res = decoder.ffn(layer, positions)
    weights = apply_threshold(torch.stack([c_res, c_ffn], -1), threshold, renormalize)  # [P, 2]
    cross_positions = []
    for k, t in enumerate(positions):
        after_layer, after_cross, ffn_node = (NodeId(kind, layer, t, "decoder") for kind in "ICM")
        residual, ffn = float(weights[k, 0]), float(weights[k, 1])
        if residual > threshold:
            _add_edge(graph, decoder, after_cross, after_layer, residual, "residual")
        if ffn > threshold:
            _add_edge(graph, decoder, ffn_node, after_layer, ffn, "ffn")
            _add_edge(graph, decoder, after_cross, ffn_node, ffn, "ffn")
        if residual > threshold or ffn > threshold:
            cross_positions.append(t)
    self_positions = []
    final = encoder.n_layers - 1
    for t in cross_positions:
        heads = torch.from_numpy(cross.heads[t])  # [S, H]
        parts = torch.cat([torch.tensor([float(cross.residual[t])], dtype=heads.dtype), heads.sum(1)])  # [1 + S]
        kept = apply_threshold(parts, threshold, renormalize)
        scale = kept / torch.where(parts > 0, parts, 1.0)  # per-edge factor, for the per-head split
        after_cross = NodeId("C", layer, t, "decoder")
        if float(kept[0]) > threshold:
            _add_edge(graph, decoder, NodeId("A", layer, t, "decoder"), after_cross, float(kept[0]), "residual")
            self_positions.append(t)
        for s in torch.nonzero(kept[1:] > threshold).flatten().tolist():
            start = NodeId("I", final, s, "encoder")
            _add_node(graph, encoder, start)  # named after its source token, not a decoder token
            _add_edge(graph, decoder, start, after_cross, float(kept[1 + s]), "cross", heads=(heads[s] * scale[1 + s]).tolist())
            reached.add(s)
    sources: set[int] = set()
    for row in decoder.attention_rows(layer, self_positions):
        sources.update(_attention_edges(graph, decoder, layer, row, "A", threshold, renormalize, ffn_weight=None, stack="decoder"))
    return sorted(sources)
