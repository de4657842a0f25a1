"""BertViz's notebook calls, drawn by llm-flow: ``head_view``, ``model_view`` and ``neuron_view``.

A BertViz notebook switches by changing its import: the arguments keep BertViz's names and
meanings (``attention`` is the ``attentions`` tuple of a ``transformers`` model run with
``output_attentions=True``, batch size 1; ``tokens`` its tokens; ``include_layers``, ``heads``,
``sentence_b_start``, ``html_action`` ...). An encoder–decoder's ``encoder_attention``,
``decoder_attention`` and ``cross_attention`` (``encoder_attentions``, ``decoder_attentions``,
``cross_attentions`` of its output) are drawn in three tabs; cross-attention joins the decoder's
tokens (queries) to the encoder's (sources). The figures are llm-flow's own head, model and neuron
views (`llm_flow.figures.attention`), and they embed plotly.js, so they draw offline.

An encoder–decoder loaded by llm-flow gives the same three tabs from
``model.run_pair(source, target)`` passed as ``attention``.

What llm-flow adds: pass a `Run` (``model.run(text)``) as ``attention`` to choose the
``weighting``: the attention weights, the norm-based weights (attention x value norm) or ALTI
contributions, which only a model's values can give.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from llm_flow.errors import ArgumentError
from llm_flow.figures.attention import head_view_menu_figure, model_view_figure, neuron_view_figure
from llm_flow.models.base import TransparentLlm
from llm_flow.models.run import Run
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.notebook.page import HtmlPage, deliver
from llm_flow.views.attention import AttentionView, attention_view, attention_view_of
from llm_flow.views.attention_scores import neuron_view as neuron_view_data
from llm_flow.views.seq2seq_attention import seq2seq_views

# BertViz's prettify_tokens: the word-start marks of byte-level BPE and SentencePiece, and
# BPE's end-of-word mark, as the text they stand for (plus byte-level BPE's line break).
_MARKS = (("Ġ", " "), ("▁", " "), ("Ċ", "\n"), ("</w>", ""))


def head_view(
    attention=None,
    tokens: Sequence[str] | None = None,
    sentence_b_start: int | None = None,
    prettify_tokens: bool = True,
    layer: int | None = None,
    heads: Sequence[int] | None = None,
    encoder_attention=None,
    decoder_attention=None,
    cross_attention=None,
    encoder_tokens: Sequence[str] | None = None,
    decoder_tokens: Sequence[str] | None = None,
    include_layers: Sequence[int] | None = None,
    html_action: str = "view",
    *,
    weighting: str = "attention",
) -> HtmlPage | None:
    """One layer at a time (a menu picks it), every head in its colour: queries on the left
    joined to the sources they weight on the right. Hover a token to isolate its lines; click a
    legend entry to hide or show a head. `layer` is the layer shown first, `heads` the heads
    shown first (the others wait in the legend), `include_layers` the layers in the menu."""
    views = _views(attention, tokens, sentence_b_start, prettify_tokens, encoder_attention, decoder_attention,
                   cross_attention, encoder_tokens, decoder_tokens, include_layers, None, weighting)  # fmt: skip
    return deliver(_page(views, lambda view: head_view_menu_figure(view, layer, heads), "Head view"), html_action)


def model_view(
    attention=None,
    tokens: Sequence[str] | None = None,
    sentence_b_start: int | None = None,
    prettify_tokens: bool = True,
    display_mode: str = "dark",
    encoder_attention=None,
    decoder_attention=None,
    cross_attention=None,
    encoder_tokens: Sequence[str] | None = None,
    decoder_tokens: Sequence[str] | None = None,
    include_layers: Sequence[int] | None = None,
    include_heads: Sequence[int] | None = None,
    html_action: str = "view",
    *,
    weighting: str = "attention",
) -> HtmlPage | None:
    """Every layer (rows) x head (columns) as a small query x source map. `display_mode` is
    accepted for BertViz's sake; llm-flow draws on white (figures that print and export alike)."""
    if display_mode not in ("dark", "light"):
        raise ArgumentError(f"display_mode must be 'dark' or 'light' (got {display_mode!r})")
    views = _views(attention, tokens, sentence_b_start, prettify_tokens, encoder_attention, decoder_attention,
                   cross_attention, encoder_tokens, decoder_tokens, include_layers, include_heads, weighting)  # fmt: skip
    return deliver(_page(views, model_view_figure, "Model view"), html_action)


def neuron_view(
    model: TransparentLlm | Run,
    text: str | None = None,
    layer: int = 0,
    head: int = 0,
    query: int = -1,
    top_k: int | None = None,
    html_action: str = "view",
) -> HtmlPage | None:
    """How one head's attention weights for one query token are made: the query and key vectors,
    their products, the scaled scores and the softmax, on any model llm-flow loads (`model` from
    `llm_flow.load_model`, or a `Run` already made). `query` is a token position (default the
    last); `top_k` shows only the strongest sources."""
    run = _run_of(model, text)
    figure = neuron_view_figure(neuron_view_data(run, layer, head, run.position(query), top_k=top_k))
    return deliver(HtmlPage([figure], "Neuron view"), html_action)


def _run_of(model: TransparentLlm | Run, text: str | None) -> Run:
    if isinstance(model, Run):
        return model
    if not isinstance(model, TransparentLlm):
        raise ArgumentError(
            f"neuron_view needs a model loaded by llm-flow (got a {type(model).__name__}): "
            "llm_flow.load_model(name), or llm_flow.load_model(hf_model, tokenizer=tokenizer) for one in memory"
        )
    if text is None:
        raise ArgumentError("neuron_view needs the text to run: neuron_view(model, text, layer, head)")
    return model.run(text)


def _views(
    attention, tokens, sentence_b_start, prettify_tokens, encoder_attention, decoder_attention,
    cross_attention, encoder_tokens, decoder_tokens, include_layers, include_heads, weighting,
) -> list[tuple[str | None, AttentionView]]:  # fmt: skip
    """(name, view) per attention to draw: the self-attention, or an encoder-decoder's parts
    (encoder self, decoder self, cross: rows are decoder tokens, columns encoder tokens)."""
    pairs = (encoder_attention, decoder_attention, cross_attention, encoder_tokens, decoder_tokens)
    if attention is not None:
        if any(part is not None for part in pairs):
            raise ArgumentError(
                "give either attention (a self-attention model) or the encoder/decoder arguments, not both"
            )
        if isinstance(attention, Seq2SeqRun):
            if tokens is not None or sentence_b_start is not None:
                raise ArgumentError("an encoder–decoder run carries its own tokens and has no sentence pair: leave tokens out")
            return seq2seq_views(attention, layers=include_layers, heads=include_heads, weighting=weighting)
        if isinstance(attention, Run):
            return [(None, _run_view(attention, tokens, sentence_b_start, include_layers, include_heads, weighting))]
        return [(None, _tuple_view(attention, tokens, sentence_b_start, prettify_tokens, include_layers, include_heads,
                                   weighting, "attention", "tokens"))]  # fmt: skip
    views = []
    for name, weights, words, sources, what in (
        ("Encoder", encoder_attention, encoder_tokens, None, "encoder"),
        ("Decoder", decoder_attention, decoder_tokens, None, "decoder"),
        ("Cross", cross_attention, decoder_tokens, encoder_tokens, "cross"),
    ):
        if weights is None:
            continue
        if what == "cross" and encoder_tokens is None:
            raise ArgumentError("encoder_tokens is required with cross_attention: the source tokens it reads")
        tokens_name = "decoder_tokens" if what == "cross" else f"{what}_tokens"
        views.append((name, _tuple_view(weights, words, None, prettify_tokens, include_layers, include_heads,
                                        weighting, f"{what}_attention", tokens_name, sources)))  # fmt: skip
    if not views:
        raise ArgumentError("no attention given: pass attention=outputs.attentions (run with output_attentions=True)")
    return views


def _page(views: list[tuple[str | None, AttentionView]], draw, title: str) -> HtmlPage:
    """One figure per view, titled by its part of an encoder–decoder (one tab each) if it has one."""
    figures = []
    for name, view in views:
        figure = draw(view)
        if name:
            figure.update_layout(title_text=f"{name}: {figure.layout.title.text}")
        figures.append(figure)
    return HtmlPage(figures, title, _tabs(views))


def _tabs(views: list[tuple[str | None, AttentionView]]) -> list[str] | None:
    """Tab names for an encoder-decoder's attentions (BertViz's switch between them)."""
    return [name for name, _ in views] if views[0][0] else None


def _run_view(run, tokens, split, include_layers, include_heads, weighting) -> AttentionView:
    if tokens is not None and len(tokens) != run.n_tokens:
        raise ArgumentError(f"the run has {run.n_tokens} tokens but {len(tokens)} tokens were given; leave tokens out")
    return attention_view(run, layers=include_layers, heads=include_heads, weighting=weighting, split=split)


def _tuple_view(
    attention, tokens, split, prettify, include_layers, include_heads, weighting, name, tokens_name, sources=None,
) -> AttentionView:  # fmt: skip
    if weighting != "attention":
        raise ArgumentError(
            f"the {weighting!r} weighting needs the model's values, not only its attention: pass a Run "
            "(llm_flow.load_model(...).run(text)) as attention"
        )
    if tokens is None:
        raise ArgumentError(f"{tokens_name} is required with {name}: the tokens the attention covers")
    weights = _stacked(attention, name, cross=sources is not None)
    layers = list(range(weights.shape[0])) if include_layers is None else list(include_layers)
    bad = [layer for layer in layers if not (isinstance(layer, (int, np.integer)) and 0 <= layer < weights.shape[0])]
    if bad or not layers:
        raise ArgumentError(f"include_layers must list layers among 0..{weights.shape[0] - 1} (got {layers})")
    tokens = [_prettified(t) if prettify else t for t in tokens]
    if sources is not None:
        sources = [_prettified(t) if prettify else t for t in sources]
    return attention_view_of(weights[layers], tokens, layers=layers, heads=include_heads, split=split, source_tokens=sources)


def _stacked(attention, name: str, cross: bool = False) -> torch.Tensor:
    """[layers, heads, T, T] float32 from a tuple of per-layer [1, heads, T, T] (or [heads, T, T]);
    [layers, heads, T, S] for cross-attention."""
    if isinstance(attention, Sequence) and not isinstance(attention, (torch.Tensor, np.ndarray)) and not attention:
        raise ArgumentError(
            f"{name} is empty: the model returned no attention weights. Run it with output_attentions=True "
            "after loading it with attn_implementation=\"eager\""
        )
    if isinstance(attention, (torch.Tensor, np.ndarray)) or not isinstance(attention, Sequence):
        raise ArgumentError(
            f"{name} must be the tuple of per-layer attention tensors that a transformers model returns "
            "with output_attentions=True (outputs.attentions)"
        )
    layers = []
    for index, layer in enumerate(attention):
        if layer is None:
            raise ArgumentError(
                f"layer {index} of {name} is None: load the model with attn_implementation=\"eager\" so it "
                "returns its attention weights"
            )
        layer = torch.as_tensor(layer).detach().float().cpu()
        if layer.dim() == 4:
            if layer.shape[0] != 1:
                raise ArgumentError(f"{name} holds a batch of {layer.shape[0]} sequences: pass one (batch size 1)")
            layer = layer[0]
        if layer.dim() != 3 or (not cross and layer.shape[1] != layer.shape[2]):
            expected = "[1, heads, decoder tokens, encoder tokens]" if cross else "[1, heads, tokens, tokens]"
            raise ArgumentError(f"layer {index} of {name} has shape {tuple(layer.shape)}, not {expected}")
        layers.append(layer)
    if len({tuple(layer.shape) for layer in layers}) != 1:
        raise ArgumentError(f"the layers of {name} differ in shape: pass the attentions of one forward pass")
    return torch.stack(layers)


def _prettified(token: str) -> str:
    for mark, text in _MARKS:
        token = token.replace(mark, text)
    return token
