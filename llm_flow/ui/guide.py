"""The guide page: what each part of the explorer shows and how to read it."""

from __future__ import annotations

import streamlit as st

GUIDE = """
### What you are looking at

A transformer adds, layer after layer, the outputs of its attention heads and FFN blocks to a
*residual stream* per token. For the token you choose, llm-flow measures how much each of those
parts contributed to each residual state (the L1-proximity measure of Ferrando & Voita's
*information-flow routes*), keeps the contributions above the threshold, and walks back from the
final state of that token to the input: the **route** is everything that carried information to
the prediction.

### The graph

* **Bottom to top**: the token embeddings (green, `emb`), then for every layer the residual after
  attention (light grey, `A`), the FFN block (pink square, `M`) and the residual after the layer
  (dark grey, `I`). Models with parallel blocks (GPT-NeoX, Pythia) have no `A` row.
* **Left to right**: the prompt's tokens.
* **Edges**: blue = attention (token *j* → token *i*, all heads together), grey = the residual
  stream, pink = the FFN. Thicker and darker means a larger contribution. Each edge has a small
  diamond at its middle: click it to inspect the edge.
* Drag to pan, scroll to zoom, double-click to fit the whole graph again.

### The panels

* **Next token**: the model's most likely continuations after the chosen token, with the
  temperature you set.
* **A residual node** (`X`, `A`, `I`): the *logit lens* — what the model would predict if it
  stopped here (optionally through the final normalisation), with each token's rank change
  against the state before this block (↑ moved up) — and the tokens the block just before it
  **promoted** (pushed up) and **suppressed**.
* **An attention edge**: the contribution of every head to this source → destination flow (the
  strongest head is preselected), that head's **attention map** (where it looked) and
  **contribution map** (what actually reached the residual stream), and the tokens it promoted or
  suppressed at the destination.
* **An FFN block**: its neurons ranked by contribution, with their activations; pick a neuron to
  see which tokens its output promotes and suppresses.

### The other pages

All pages work on the same model, prompt and token (chosen in the sidebar and the token slider),
and every page's settings are kept when you move between them.

* **Attention**: BertViz-style head, model and neuron views of the attention patterns, with a
  switch between *attention weight*, *attention × value norm* (what a head could move) and the
  *ALTI contribution* (what it did move, the numbers behind the route). Works on long prompts
  through a window around the chosen token and top-k sources.
* **Attribution**: which input tokens made the model say each token of a continuation
  (gradients, integrated gradients, occlusion, attention, ALTI rollout), with step scores and
  contrastive "why this and not that" targets.
* **Playground**: the next-token distribution through temperature, top-k and top-p, one stage
  at a time; step or generate, and open any generated token's route; the *anatomy* of one
  prediction layer by layer.
* **Inside**: the chosen token's prediction walked through the model stage by stage with its real
  numbers: embedding, the norms, queries, keys and values, rotary, attention step by step for one
  head, the MLP, the residual additions, the logits and the sampling; a flow of the whole model
  on top, and a guided tour (*Previous* / *Next*) through the stages.
* **Dataset**: route statistics over many prompts (computed with `llm-flow dataset`): which heads
  and FFN blocks are on routes in general, and how two sets of prompts differ.
* In the Explorer, **Check this route** re-runs the model with only the route, or without it,
  against random parts of the same size; **Remove this edge** shows what one edge changes.

### Settings

* **Contribution threshold**: edges at or below it are dropped (default 0.04). Lower values show
  more of the flow; higher values only the main roads.
* **Renormalise after threshold**: rescale what survives at each node to sum to 1.
* Changing the token, the threshold or the panel choices never re-runs the model. Every page shares the model, prompt, token and settings chosen here; the browser URL always reopens what is on screen (the sidebar's *Copy link*).
"""


def guide_page() -> None:
    st.title("How to read llm-flow")
    st.markdown(GUIDE)
