"""Figures and tables as files a reader can open without llm-flow.

One helper for the app's download buttons and the CLI's output flags:

* a figure becomes standalone interactive HTML (plotly.js embedded, so it opens offline with no
  server), SVG or PNG, chosen by the file's suffix; all three get *paper styling* (white
  background, readable fonts, a title saying what the figure shows);
* a table becomes CSV.

A figure can carry JavaScript for its standalone HTML (:func:`attach_html_script`): behaviour
the page has no other way to get, such as the head view's hover isolation.

SVG and PNG are drawn by kaleido 1.x, which drives a Chrome-family browser: Debian's
``chromium`` package, Google Chrome, or the one ``kaleido_get_chrome`` downloads. ``BROWSER_PATH``
names one explicitly. Nothing heavy is imported at module level, so the CLI can call
:func:`check_writable` before torch or plotly load.
"""

from __future__ import annotations

import html
import math
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from llm_flow.errors import ArgumentError, ExportError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    import plotly.graph_objects as go

#: Figure formats by file suffix.
FIGURE_FORMATS = {".html": "html", ".htm": "html", ".svg": "svg", ".png": "png"}
#: Environment variable naming the browser kaleido should drive (kaleido's own convention).
BROWSER_ENV = "BROWSER_PATH"
#: Static exports without an explicit size use the figure's own size, else this.
DEFAULT_SIZE = (1000, 700)
#: What an export may ask for: width and height in CSS pixels, and the PNG's pixels per CSS pixel.
#: The largest PNG is then 16,000 pixels a side, about what Chromium can still draw in one piece.
SIZE_RANGE = (100, 4000)
SCALE_RANGE = (0.25, 4.0)
_FONT = dict(family="Arial, Helvetica, sans-serif", size=14, color="#222222")
_TITLE_CHARS = 90  # longer prompts are cut in titles
_TITLE_SIZE = 16
_TITLE_PAD = 12  # pixels between the title and the top edge
_RENDER_TIMEOUT_S = 120
_HTML_SCRIPT = "_llm_flow_html_script"  # plotly figures accept attributes named with a leading "_"


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Refuse an output path that cannot be written, before any slow work.

    Tries for real (creates and removes a temporary file in the folder, or opens an existing file
    for appending without changing it): permission bits alone say nothing for root, read-only
    mounts or ACLs.
    """
    path = Path(path).expanduser()
    folder = path.parent
    if path.is_dir():
        raise ArgumentError(f"cannot write {path}: it is a folder; give a file name inside it")
    if not folder.exists():
        raise ArgumentError(f"cannot write {path}: the folder {folder} does not exist (create it first)")
    if not folder.is_dir():
        raise ArgumentError(f"cannot write {path}: {folder} is a file, not a folder")
    try:
        if path.exists():
            with open(path, "ab"):
                pass
        else:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".llm-flow-check-"):
                pass
    except OSError as exc:
        raise ArgumentError(f"cannot write {path}: {exc.strerror or exc} (choose another folder)") from None
    return path


def figure_format(path: str | os.PathLike[str]) -> str:
    """``html``, ``svg`` or ``png`` from the file suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise ArgumentError(
            f"cannot export a figure as {Path(path).name!r}: use a name ending in .html, .svg or .png"
        )
    return FIGURE_FORMATS[suffix]


def save_figure(
    fig: "go.Figure",
    path: str | os.PathLike[str],
    title: str | None = None,
    *,
    width: int | None = None,
    height: int | None = None,
    scale: float = 1.0,
) -> Path:
    """Write `fig` as HTML, SVG or PNG (by suffix) with paper styling; return the path.

    `width` and `height` are the layout size in CSS pixels (default: the figure's own, else
    1000 x 700); a PNG has ``scale`` times as many pixels each way (SVG and HTML ignore it). HTML
    keeps the figure's responsive width unless `width` is given. Limits: :func:`check_figure_size`.
    """
    fmt = figure_format(path)
    path = check_writable(path)
    data = figure_bytes(fig, fmt, title, width=width, height=height, scale=scale)
    _write(path, data)
    return path


def attach_html_script(fig: "go.Figure", script: str) -> "go.Figure":
    """Have `fig`'s standalone HTML run `script` once the plot is drawn; ``{plot_id}`` in it
    becomes the id of the plot's div. Kept by `paper_figure`, lost by a copy (``go.Figure(fig)``).
    Returns `fig`."""
    setattr(fig, _HTML_SCRIPT, script)
    return fig


def html_script(fig: "go.Figure") -> str | None:
    """The script attached with `attach_html_script`, if any."""
    return getattr(fig, _HTML_SCRIPT, None)


def figure_bytes(
    fig: "go.Figure",
    fmt: str,
    title: str | None = None,
    *,
    width: int | None = None,
    height: int | None = None,
    scale: float = 1.0,
) -> bytes:
    """The exported file's content, in memory (for download buttons). `fmt`: html, svg or png."""
    if fmt not in ("html", "svg", "png"):
        raise ArgumentError(f"unknown figure format {fmt!r}: use 'html', 'svg' or 'png'")
    check_figure_size(width, height, scale)
    styled = paper_figure(fig, title)
    if fmt == "html":
        return figure_html(fig, title, width=width, height=height).encode("utf-8")
    styled = paper_figure(fig, title)
    size = (
        width or styled.layout.width or DEFAULT_SIZE[0],
        height or styled.layout.height or DEFAULT_SIZE[1],
    )
    return _render_static(styled, fmt, size, scale if fmt == "png" else 1.0)  # an SVG has no pixels to multiply


def check_figure_size(width: int | None = None, height: int | None = None, scale: float = 1.0) -> None:
    """Refuse a size no export should be made at (the app's Export menu and the CLI's
    ``--width/--height/--scale`` both ask here). ``None`` keeps the figure's own size."""
    low, high = SIZE_RANGE
    for name, value in (("width", width), ("height", height)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ArgumentError(f"the figure {name} must be a whole number of pixels from {low} to {high} (got {value!r})")
    low, high = SCALE_RANGE
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not low <= scale <= high:
        raise ArgumentError(
            f"the PNG scale must be a number from {low:g} to {high:g} (got {scale!r}); "
            "2 gives twice the pixels each way, for print"
        )


def figure_html(
    fig: "go.Figure",
    title: str | None = None,
    *,
    full_html: bool = True,
    include_plotlyjs: bool = True,
    width: int | None = None,
    height: int | None = None,
) -> str:
    """The figure as interactive HTML with paper styling, plotly.js embedded (no CDN: it opens
    offline) and its attached script run. A full page has the plot in ``#llm-flow-figure``; a
    fragment (``full_html=False``, for a notebook cell or a page of several figures) gets an id
    of its own, and may leave plotly.js out when an earlier fragment on the page brings it."""
    styled = paper_figure(fig, title)
    if width is not None or height is not None:
        styled.update_layout(width=width, height=height, autosize=False)
    page = styled.to_html(
        include_plotlyjs=include_plotlyjs, full_html=full_html, post_script=html_script(styled),
        div_id="llm-flow-figure" if full_html else f"llm-flow-{uuid.uuid4().hex}",
        config={"displaylogo": False, "responsive": True},
    )  # fmt: skip
    return _titled_page(page, title) if full_html else page


def html_page(parts: "Sequence[str | go.Figure]", title: str, style: str = "") -> str:
    """One standalone page of several figures and HTML fragments, in order: plotly.js embedded
    once (the page opens offline, with no server), each figure with paper styling."""
    body = []
    first = True
    for k, part in enumerate(parts):
        if isinstance(part, str):
            body.append(part)
            continue
        styled = paper_figure(part).update_layout(margin=part.layout.margin)  # no title: keep the figure's own
        body.append(
            styled.to_html(
                include_plotlyjs=first, full_html=False, div_id=f"llm-flow-figure-{k}",
                config={"displaylogo": False, "responsive": True},
            )
        )  # fmt: skip
        first = False
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(_plain(title), quote=False)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def save_html(page: str, path: str | os.PathLike[str]) -> Path:
    """Write a whole HTML page (e.g. from :func:`html_page`); return the path."""
    if Path(path).suffix.lower() not in (".html", ".htm"):
        raise ArgumentError(f"cannot write a page as {Path(path).name!r}: use a name ending in .html")
    path = check_writable(path)
    _write(path, page.encode("utf-8"))
    return path


def paper_figure(fig: "go.Figure", title: str | None = None) -> "go.Figure":
    """A copy of `fig` styled for print: white background, dark readable text, the title on top.

    Axis settings, traces, sizes and an attached HTML script are kept; only colours, fonts and
    the title change.
    """
    import plotly.graph_objects as go

    styled = go.Figure(fig)
    script = html_script(fig)
    if script is not None:
        attach_html_script(styled, script)
    margin = styled.layout.margin
    top = max(margin.t or 0, 30)  # the figure's own room above the plot (subplot titles live there)
    height = title_height(title)
    styled.update_layout(
        template="plotly_white", paper_bgcolor="white", plot_bgcolor="white", font=_FONT,
        margin=dict(t=top + height, l=max(margin.l or 0, 40)), hoverlabel=dict(font_size=13),
    )  # fmt: skip
    if title:
        first_baseline = _TITLE_PAD + _TITLE_SIZE  # from the top edge
        styled.update_layout(
            title=dict(
                text=title, x=0, xref="paper", xanchor="left", y=1, yref="paper", yanchor="bottom",
                pad=dict(b=top + height - first_baseline), automargin=False, font=dict(size=_TITLE_SIZE),
            )
        )  # fmt: skip
    return styled


def title_height(title: str | None) -> int:
    """The room a title takes above the figure's own top margin, in pixels.

    Computed rather than left to plotly's ``title.automargin``: plotly.js moves the axes but not
    the traces when that margin grows (plotly.js issue 7750), so every point was drawn a fixed
    number of pixels off its axis labels (the embeddings on the "L0" line in route exports).
    Plotly sets lines of text 1.3 font sizes apart and, anchored at the bottom, puts the first
    line's baseline at the anchor with the other lines below it; titles here never wrap.
    """
    if not title:
        return 0
    lines = len(re.split(r"<br\s*/?>", title, flags=re.IGNORECASE))
    return _TITLE_PAD + math.ceil(1.3 * _TITLE_SIZE * lines)


def route_title(
    model: str, prompt: str, token: str, position: int, threshold: float, renormalize: bool
) -> str:
    """The title of an exported route graph: what was analysed, at which token, with which settings.

    Plotly titles read a little HTML, so user text is escaped and the prompt is shortened.
    """
    shown = short_prompt(prompt)
    renorm = "renormalised" if renormalize else "not renormalised"
    return (
        f"<b>Information-flow routes</b> · {title_text(model)} · token {position} "
        f"{title_text(repr(token))} · threshold {threshold:g} ({renorm})"
        f"<br><span style='font-size:13px'>{title_text(repr(shown))}</span>"
    )


def title_text(text: str) -> str:
    """User text made safe for a plotly title, which reads a little HTML: ``<``, ``>`` and ``&``
    are escaped; quotes are not (plotly would show ``&quot;`` as typed)."""
    return html.escape(text, quote=False)


def short_prompt(prompt: str) -> str:
    """A prompt cut to a length a figure title can show on one line (titles never wrap)."""
    return prompt if len(prompt) <= _TITLE_CHARS else prompt[: _TITLE_CHARS - 1] + "…"


def table_csv(frame: "pd.DataFrame") -> bytes:
    """A table as UTF-8 CSV without the index.

    Token columns round-trip with ``pd.read_csv(path, keep_default_na=False)`` (otherwise a token
    such as ``"nan"`` or ``""`` reads back as a missing value).
    """
    return frame.to_csv(index=False).encode("utf-8")


def save_table(frame: "pd.DataFrame", path: str | os.PathLike[str]) -> Path:
    """Write a table as CSV; return the path."""
    if Path(path).suffix.lower() != ".csv":
        raise ArgumentError(f"cannot export a table as {Path(path).name!r}: use a name ending in .csv")
    path = check_writable(path)
    _write(path, table_csv(frame))
    return path


def find_browser() -> str:
    """The Chrome-family browser kaleido will drive: ``$BROWSER_PATH`` if set, else the first found
    on this machine (kaleido's own download, then chrome/chromium/edge/brave on ``PATH``)."""
    from choreographer.browsers.chromium import Chromium

    explicit = os.environ.get(BROWSER_ENV)
    if explicit:
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
            raise ExportError(
                f"{BROWSER_ENV}={explicit!r} is not an executable browser: point it at chromium or "
                "chrome, or unset it to use the one installed (Debian/Ubuntu: apt-get install chromium)"
            )
        return explicit
    found = Chromium.find_browser(skip_local=False)
    if not found:
        raise ExportError(
            "SVG and PNG export need a Chrome-family browser, and none was found. Install one "
            "(Debian/Ubuntu: apt-get install chromium; or run kaleido_get_chrome), or set "
            f"{BROWSER_ENV} to its path. HTML export works without one."
        )
    return found


def _render_static(fig: "go.Figure", fmt: str, size: tuple[int, int], scale: float) -> bytes:
    """SVG or PNG through kaleido; the page uses the plotly.js that ships with plotly (offline),
    and MathJax is off (it would be fetched from a CDN and figures here use no LaTeX)."""
    import kaleido

    browser = find_browser()
    opts = dict(format=fmt, width=int(size[0]), height=int(size[1]), scale=scale)
    try:
        data = kaleido.calc_fig_sync(
            fig, opts=opts, kopts=dict(path=browser, mathjax=False, timeout=_RENDER_TIMEOUT_S)
        )
    except Exception as exc:  # kaleido and the browser raise many types (launch, protocol, timeout)
        raise ExportError(f"the browser at {browser} could not render the {fmt.upper()}: {_first_line(exc)}") from exc
    return data if isinstance(data, bytes) else str(data).encode("utf-8")


def _titled_page(page: str, title: str | None) -> str:
    """Give the standalone page a tab title (plotly writes none)."""
    text = "llm-flow figure" if not title else _plain(title)
    return page.replace("</head>", f"<title>{html.escape(text)}</title></head>", 1)


def _plain(title: str) -> str:
    """Title text without plotly's tags, for the browser tab."""
    return html.unescape(re.sub(r"<br\s*/?>", " — ", re.sub(r"<(?!br)[^>]*>", "", title)))


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise ArgumentError(f"cannot write {path}: {exc.strerror or exc}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
