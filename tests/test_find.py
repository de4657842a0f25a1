"""Finding a node in a route graph by token text, position, layer or name, and opening the figure
zoomed on it: the expected nodes are read off the graph's own node attributes, the view from the
exported SVG's pixels."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

import llm_flow
from llm_flow.errors import ArgumentError
from llm_flow.export import figure_bytes, route_title
from llm_flow.figures.route import focus_ranges, route_figure
from llm_flow.routes.find import find_nodes
from llm_flow.views.tokens import display_token
from tests.test_export import SVG, needs_chromium
from tests.test_export_layout import TRANSLATE, html_figure, svg_trace_points

PROMPT = "The capital of France is Paris. When Mary and John went to the store, John gave a drink to"
LEVEL = {"embedding": 0, "resid_mid": 1, "ffn": 2, "resid_post": 3}


@pytest.fixture(scope="module")
def graphs(tiny_models):
    """A sequential (Llama) and a parallel (GPT-NeoX) route over the same prompt, kept generous."""
    return {
        family: llm_flow.build_graph(tiny_models(family).run(PROMPT), target=-1, threshold=0.02)
        for family in ("llama", "gpt_neox")
    }


def at(graph, **attributes) -> set[str]:
    return {n for n, data in graph.nodes(data=True) if all(data[k] == v for k, v in attributes.items())}


def reading_order(graph, names) -> list[str]:
    """Left to right, then bottom to top, from the node attributes."""
    def place(name):
        data = graph.nodes[name]
        return data["position"], data["layer"], LEVEL[data["kind"]]

    return sorted(names, key=place)


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_a_position_a_layer_and_the_embeddings_find_all_their_nodes_in_reading_order(graphs, family):
    graph = graphs[family]
    last = graph.graph["n_tokens"] - 1
    queries = {"-1": at(graph, position=last), str(last): at(graph, position=last), "L1": at(graph, layer=1),
               "l1": at(graph, layer=1), "emb": at(graph, kind="embedding")}  # fmt: skip
    for query, expected in queries.items():
        assert expected and find_nodes(graph, query).nodes == tuple(reading_order(graph, expected)), query
    count = len(at(graph, position=last))
    assert find_nodes(graph, "-1").message == f"Token {last} {graph.graph['tokens'][last]!r}: {count} nodes."
    assert find_nodes(graph, "-1").nodes[-1] == f"I{graph.graph['n_layers'] - 1}_{last}", "the top node comes last"


def test_token_text_finds_exact_tokens_before_tokens_that_contain_it(graphs):
    graph = graphs["llama"]
    tokens = graph.graph["tokens"]
    reached = sorted({data["position"] for _, data in graph.nodes(data=True)})
    word = next(tokens[p].strip() for p in reached if tokens[p].strip().isalpha() and len(tokens[p].strip()) >= 2)
    exact = [p for p in reached if tokens[p].strip().lower() == word.lower()]
    for query in (word, f" {word.upper()} ", f"·{word}"):  # as typed: any case, the figure's space dot
        found = find_nodes(graph, query)
        first = reading_order(graph, at(graph, position=exact[0]))
        assert found.nodes[: len(first)] == tuple(first)
        assert {graph.nodes[n]["position"] for n in found.nodes} == {p for p in reached if word.lower() in tokens[p].lower()}
    part = word[1:].lower()  # a part of the word: exact tokens first, then tokens that contain it
    found = [graph.nodes[n]["position"] for n in find_nodes(graph, part).nodes]
    exact = [p for p in reached if tokens[p].strip().lower() == part]
    contain = [p for p in reached if part in tokens[p].lower() and p not in exact]
    assert list(dict.fromkeys(found)) == exact + contain and contain


def test_a_node_name_finds_that_node_and_a_missing_one_says_why(graphs):
    graph = graphs["llama"]
    name = sorted(at(graph, kind="resid_mid"))[0]
    assert find_nodes(graph, name).nodes == (name,)
    assert find_nodes(graph, name.lower()).nodes == (name,)
    assert "residual after attention" in find_nodes(graph, name).message
    missing = next(f"M0_{p}" for p in range(graph.graph["n_tokens"]) if f"M0_{p}" not in graph)
    found = find_nodes(graph, missing)
    assert found.nodes == () and f"{missing} is not on this route at threshold 0.02" in found.message
    assert "a lower threshold keeps more" in found.message


def test_nothing_found_is_a_message_and_bad_queries_say_what_to_type(graphs):
    graph = graphs["llama"]
    n_tokens, n_layers = graph.graph["n_tokens"], graph.graph["n_layers"]
    assert find_nodes(graph, "Zanzibar").nodes == () and find_nodes(graph, "Zanzibar").query == "Zanzibar"
    assert find_nodes(graph, "Zanzibar").message == "No token of the prompt reads 'Zanzibar'."
    assert find_nodes(graph, '"3"').message == "No token of the prompt reads '3'.", "quotes make a query text"
    assert find_nodes(graph, '"3"').query == '"3"'
    assert find_nodes(graph, '"Paris').message == """No token of the prompt reads '"Paris'.""", "one quote is text"
    with pytest.raises(ArgumentError) as blank:
        find_nodes(graph, "  ")
    assert str(blank.value) == "type a token, a position (7), a layer (L3) or a node name (A3_5) to find"
    unreached = [p for p in range(n_tokens) if not at(graph, position=p)]
    if unreached:
        assert "is not reached by this route" in find_nodes(graph, str(unreached[0])).message
    cases = {
        "  ": "type a token, a position (7), a layer (L3) or a node name (A3_5)",
        str(n_tokens): f"token {n_tokens} is out of range: the prompt has {n_tokens} tokens",
        f"-{n_tokens + 1}": "is out of range",
        f"L{n_layers}": f"layer {n_layers} is out of range: the model has {n_layers} layers (L0–L{n_layers - 1})",
        f"A{n_layers}_0": f"layer {n_layers} is out of range",
    }
    for query, message in cases.items():
        with pytest.raises(ArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
            find_nodes(graph, query)
    with pytest.raises(ArgumentError) as quotes:
        find_nodes(graph, '""')
    assert str(quotes.value) == "type some text of a token to find it (quotes alone match nothing)"


def test_what_was_found_is_said_in_words(graphs):
    """The line above the matches: a node's kind (its layer unless it is an embedding) and token;
    token text found at one token names it, found at several counts them."""
    graph = graphs["llama"]
    tokens = graph.graph["tokens"]
    embedding = sorted(at(graph, kind="embedding"))[0]
    p = graph.nodes[embedding]["position"]
    assert find_nodes(graph, embedding).message == f"{embedding}: token embedding at token {p} {tokens[p]!r}."
    attention = sorted(at(graph, kind="resid_mid", layer=1))[0]
    p = graph.nodes[attention]["position"]
    expected = f"{attention}: residual after attention (layer 1) at token {p} {tokens[p]!r}."
    assert find_nodes(graph, attention).message == expected
    assert find_nodes(graph, attention).query == attention
    missing = next(f"M0_{p}" for p in range(graph.graph["n_tokens"]) if f"M0_{p}" not in graph)
    assert find_nodes(graph, missing).query == missing
    reached = sorted({data["position"] for _, data in graph.nodes(data=True)})
    once = next(p for p in reached if len(tokens[p].strip()) > 1 and sum(tokens[p].strip() in t for t in tokens) == 1)
    count = len(at(graph, position=once))
    found = find_nodes(graph, tokens[once].strip())
    assert found.query == tokens[once].strip()
    nodes = f"{count} node" + ("s" if count > 1 else "")
    assert found.message == f"{tokens[once].strip()!r}: {nodes} at token {once} {tokens[once]!r}."
    several = [p for p in reached if "a" in tokens[p].lower()]
    count = sum(len(at(graph, position=p)) for p in several)
    assert len(several) > 1 and find_nodes(graph, "a").message == f"'a': {count} nodes at {len(several)} tokens."


def test_a_layer_names_its_nodes_and_tokens_and_a_miss_lists_at_most_twelve_tokens(graphs):
    """``L0``, ``L1`` and ``emb`` count their nodes and tokens; a node off a route that reaches 14
    tokens lists the first 12 of them and an ellipsis."""
    graph = graphs["llama"]
    for query, layer, what in (("L0", 0, "Layer 0"), ("l1", 1, "Layer 1"), ("emb", -1, "The token embeddings")):
        nodes = at(graph, layer=layer)
        tokens = {graph.nodes[n]["position"] for n in nodes}
        found = find_nodes(graph, query)
        assert found.query == query and len(nodes) > 1
        at_tokens = f"{len(tokens)} token" + ("s" if len(tokens) > 1 else "")
        assert found.message == f"{what}: {len(nodes)} nodes at {at_tokens}."
    last = graph.graph["n_tokens"] - 1
    assert find_nodes(graph, "-1").query == "-1" and find_nodes(graph, str(last)).nodes
    reached = sorted({data["position"] for _, data in graph.nodes(data=True)})
    layers = sorted({data["layer"] for _, data in graph.nodes(data=True) if data["layer"] >= 0})
    assert len(reached) == 14, "the premise: more tokens than the message lists"
    missing = next(f"M0_{p}" for p in range(graph.graph["n_tokens"]) if f"M0_{p}" not in graph)
    assert find_nodes(graph, missing).message == (
        f"{missing} is not on this route at threshold 0.02 (it reaches layers {layers[0]}–{layers[-1]} and tokens "
        f"{', '.join(map(str, reached[:12]))}, …; a lower threshold keeps more)."
    )


def test_a_line_break_inside_a_token_is_typed_as_the_figure_shows_it(graphs):
    """Labels draw a line break as ↵ (``display_token``); typed so, it finds the token. The tiny
    tokenizer keeps every line break a token of its own, so one reached token is given one inside."""
    graph = graphs["llama"].copy()
    position = max(data["position"] for _, data in graph.nodes(data=True))
    graph.graph["tokens"] = [*graph.graph["tokens"][:position], "in\nk", *graph.graph["tokens"][position + 1 :]]
    assert display_token("in\nk") == "in↵k"
    assert find_nodes(graph, "in↵k").nodes == tuple(reading_order(graph, at(graph, position=position)))


def test_a_token_that_is_only_a_line_break_or_only_a_space_is_found_as_the_figure_draws_it(graphs):
    """Code and verse have tokens that are a line break alone (drawn ↵) or a space alone (drawn ·):
    typing the figure's mark finds exactly those; a word still finds its token with the spaces around
    it ignored, and a token with a space inside is not spacing. Two reached tokens are given those
    texts, and a third a space inside. The tiny tokenizer also keeps spaces as tokens of their own:
    "·" finds those as well, in reading order."""
    graph = graphs["llama"].copy()
    inside, first, last = sorted({data["position"] for _, data in graph.nodes(data=True)})[-3:]
    tokens = list(graph.graph["tokens"])
    tokens[inside], tokens[first], tokens[last] = " New York", "\n", " "
    graph.graph["tokens"] = tokens
    assert (display_token("\n"), display_token(" ")) == ("↵", "·")
    assert find_nodes(graph, "↵").nodes == tuple(reading_order(graph, at(graph, position=first)))
    spaces = sorted(p for p in {data["position"] for _, data in graph.nodes(data=True)} if tokens[p] == " ")
    assert last in spaces and len(spaces) > 1, "the premise: the prompt's own space tokens are reached too"
    assert find_nodes(graph, "·").nodes == tuple(n for p in spaces for n in reading_order(graph, at(graph, position=p)))
    assert find_nodes(graph, " new york ").nodes == tuple(reading_order(graph, at(graph, position=inside)))


def test_text_the_route_does_not_reach_names_up_to_five_of_its_tokens_and_what_the_route_reaches(tiny_models):
    """A narrow route (threshold 0.1 reaches 3 tokens): "a" reads as tokens 40 and 42 and is part
    of 6 more, none on the route. The message lists the exact ones first, five in all, then where
    the route does go, all read off the graph's attributes."""
    graph = llm_flow.build_graph(tiny_models("llama").run(PROMPT), target=-1, threshold=0.1)
    tokens = graph.graph["tokens"]
    reached = sorted({data["position"] for _, data in graph.nodes(data=True)})
    exact = [p for p, token in enumerate(tokens) if token.strip().lower() == "a"]
    contain = [p for p, token in enumerate(tokens) if "a" in token.lower() and p not in exact]
    assert len(exact) == 2 and len(exact + contain) > 5 and not set(exact + contain) & set(reached), "the premise"
    layers = sorted({data["layer"] for _, data in graph.nodes(data=True) if data["layer"] >= 0})
    shown = ", ".join(f"token {p} {tokens[p]!r}" for p in (exact + contain)[:5])
    found = find_nodes(graph, " a ")
    assert found.query == " a " and found.nodes == ()
    assert found.message == (
        f"'a' is {shown}, not reached by this route at threshold 0.1 (it reaches layers {layers[0]}–{layers[-1]} "
        f"and tokens {', '.join(map(str, reached))}; a lower threshold keeps more)."
    )


def test_focus_ranges_centre_the_node_and_stay_inside_the_graph(graphs):
    graph = graphs["llama"]  # 3 layers: levels 0 (embeddings) to 6, fewer than the default window
    n_columns = graph.graph["n_tokens"]
    node = next(n for n in reading_order(graph, graph) if 3 <= graph.nodes[n]["position"] <= n_columns - 4)
    data = graph.nodes[node]
    level = {"embedding": 0, "resid_mid": 1, "ffn": 1.5, "resid_post": 2}[data["kind"]] + 2 * max(data["layer"], 0)
    x = data["position"] + (0.3 if data["kind"] == "ffn" else 0.0)  # FFN squares sit right of their column
    x_range, y_range = focus_ranges(graph, node, columns=5, levels=4)
    assert x_range == pytest.approx([x - 2.5, x + 2.5])
    assert y_range == pytest.approx([min(max(level - 2, -0.8), 6.8 - 4), min(max(level - 2, -0.8), 6.8 - 4) + 4])
    assert focus_ranges(graph, node)[1] == pytest.approx([-0.8, 6.8]), "a graph lower than the window is shown whole"
    for name, data in graph.nodes(data=True):  # near an edge the window slides, never past it
        x_range, y_range = focus_ranges(graph, name, columns=5, levels=4)
        assert -0.6 <= x_range[0] <= data["position"] <= x_range[1] <= n_columns - 0.4
        assert x_range[1] - x_range[0] == pytest.approx(5) and y_range[1] - y_range[0] == pytest.approx(4)
        assert -0.8 <= y_range[0] and y_range[1] <= 6.8
    with pytest.raises(ArgumentError, match="not a node of this route"):
        focus_ranges(graph, "Q_0")


def test_a_focused_figure_keeps_its_view_in_the_html_export(graphs):
    graph = graphs["llama"]
    node = sorted(at(graph, layer=1, kind="resid_mid"))[0]
    _, layout = html_figure(figure_bytes(route_figure(graph, focus=node), "html", "focus").decode("utf-8"))
    x_range, y_range = focus_ranges(graph, node)
    assert layout["xaxis"]["range"] == pytest.approx(x_range) and layout["yaxis"]["range"] == pytest.approx(y_range)
    assert "autorange" not in layout["yaxis"] or layout["yaxis"]["autorange"] is False


@pytest.mark.real_model
@needs_chromium
@pytest.mark.browser
def test_the_exported_svg_shows_the_focused_node_in_the_middle(smollm2):
    run = smollm2.run(PROMPT)
    graph = llm_flow.build_graph(run, target=-1, threshold=0.04)
    last = run.n_tokens - 1
    node = next(
        n for n in reading_order(graph, at(graph, layer=14, kind="resid_post")) if 4 <= graph.nodes[n]["position"] <= last - 4
    )
    figure = route_figure(graph, focus=node)
    title = route_title("smollm2", PROMPT, run.str_tokens[-1], last, 0.04, True)
    root = ET.fromstring(figure_bytes(figure, "svg", title, width=1000, height=800))
    plot = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "xy" and g.get("clip-path"))
    left, top = map(float, TRANSLATE.search(plot.get("transform")).groups())
    clip = root.find(f".//{SVG}clipPath[@id='{plot.get('clip-path')[5:-1]}']/{SVG}rect")
    centre = (left + float(clip.get("width")) / 2, top + float(clip.get("height")) / 2)
    index = next(i for i, t in enumerate(figure.data) if t.customdata is not None and node in list(t.customdata))
    drawn = svg_trace_points(root)[index][list(figure.data[index].customdata).index(node)]
    assert drawn == pytest.approx(centre, abs=1.0)


def test_a_layer_or_token_the_route_misses_says_so_and_where_the_route_goes(graphs, tiny_models):
    """``emb`` on a route that stops above the embeddings (threshold 0.5 reaches one token, layers
    0–2 only), and a token position the generous route skips: no nodes, and the miss in words."""
    narrow = llm_flow.build_graph(tiny_models("llama").run(PROMPT), target=-1, threshold=0.5)
    assert not at(narrow, kind="embedding"), "the premise: the route stops above the embeddings"
    layers = sorted({data["layer"] for _, data in narrow.nodes(data=True)})
    reached = sorted({data["position"] for _, data in narrow.nodes(data=True)})
    found = find_nodes(narrow, "emb")
    assert found.query == "emb" and found.nodes == ()
    assert found.message == (
        f"No node of the token embeddings is on this route at threshold 0.5 (it reaches layers {layers[0]}–{layers[-1]} "
        f"and tokens {', '.join(map(str, reached))}; a lower threshold keeps more)."
    )
    graph = graphs["llama"]
    tokens, n_tokens = graph.graph["tokens"], graph.graph["n_tokens"]
    reached = sorted({data["position"] for _, data in graph.nodes(data=True)})
    layers = sorted({data["layer"] for _, data in graph.nodes(data=True) if data["layer"] >= 0})
    missed = next(p for p in range(n_tokens) if p not in reached)
    for query in (str(missed), str(missed - n_tokens)):  # counted from the start or from the end
        found = find_nodes(graph, query)
        assert found.query == query and found.nodes == ()
        assert found.message == (
            f"Token {missed} {tokens[missed]!r} is not reached by this route at threshold 0.02 (it reaches layers "
            f"{layers[0]}–{layers[-1]} and tokens {', '.join(map(str, reached[:12]))}, …; a lower threshold keeps more)."
        )


@pytest.mark.parametrize("n_reached, ellipsis", [(13, ", …"), (12, "")])
def test_a_miss_lists_twelve_reached_tokens_and_an_ellipsis_only_when_there_are_more(graphs, n_reached, ellipsis):
    """The hint after a miss reads the route's nodes only: the 14-token route with the nodes of its
    first tokens taken out reaches exactly 13 or 12 tokens."""
    graph = graphs["llama"].copy()
    reached = sorted({data["position"] for _, data in graph.nodes(data=True)})
    for position in reached[: len(reached) - n_reached]:
        graph.remove_nodes_from(at(graph, position=position))
    reached = reached[len(reached) - n_reached :]
    assert sorted({data["position"] for _, data in graph.nodes(data=True)}) == reached
    layers = sorted({data["layer"] for _, data in graph.nodes(data=True) if data["layer"] >= 0})
    missing = next(f"M0_{p}" for p in range(graph.graph["n_tokens"]) if f"M0_{p}" not in graph)
    assert find_nodes(graph, missing).message == (
        f"{missing} is not on this route at threshold 0.02 (it reaches layers {layers[0]}–{layers[-1]} and tokens "
        f"{', '.join(map(str, reached[:12]))}{ellipsis}; a lower threshold keeps more)."
    )
