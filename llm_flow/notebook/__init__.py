"""llm-flow in a Jupyter notebook: BertViz's calls drawn by llm-flow, and the display helpers.

    from llm_flow.notebook import head_view, model_view, neuron_view
    head_view(outputs.attentions, tokens)           # as with BertViz: one import changes

Results (`Run`, `Route`, `Attribution`, route checks, dataset results, sampling stages) show a
summary table when a cell ends with them, draw their figure with ``.show()`` and give their
numbers with ``.to_frame()``; `llm_flow.explain` draws the Explorer's main view in a cell.
"""

from llm_flow.notebook.bertviz import head_view, model_view, neuron_view
from llm_flow.notebook.page import HtmlPage

__all__ = ["HtmlPage", "head_view", "model_view", "neuron_view"]
