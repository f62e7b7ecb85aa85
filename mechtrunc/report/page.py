"""One self-contained HTML page made of sections.

A :class:`Section` is a titled list of parts; a part is raw HTML (``str``, see :func:`html_table`
and :func:`note`), a plotly figure, or a :class:`CircuitsView` (a circuitsvis React component and
its props).  :class:`Report` lays the sections out in one page that works from ``file://`` with
no network: plotly's JavaScript is inlined once (before the first chart) and circuitsvis' bundle
once (before the first view); each view is then a small ``CircuitsVis.render(...)`` call.  No
CDN, no web font (system font stack).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["Section", "CircuitsView", "Report", "html_table", "note", "esc"]

esc = html.escape


@dataclass
class CircuitsView:
    """A circuitsvis component (``"AttentionHeads"``, ``"ColoredTokens"``, ...) with its props
    (the camelCase names circuitsvis' React components take; tensors and arrays are converted)."""

    component: str
    props: dict
    caption: str | None = None
    height: int | None = None  # minimum height reserved for the view (px)


@dataclass
class Section:
    """A titled block of a report.  ``parts``: HTML strings, plotly figures, CircuitsViews.
    ``incomplete`` marks a section whose data are partial (shown as a visible note)."""

    id: str
    title: str
    parts: list = field(default_factory=list)
    intro: str | None = None

    def add(self, *parts) -> "Section":
        self.parts.extend(parts)
        return self

    @property
    def figures(self) -> list:
        return [p for p in self.parts if _is_plotly(p)]


def _is_plotly(obj) -> bool:
    return type(obj).__module__.startswith("plotly.") and hasattr(obj, "to_html")


def note(text: str, kind: str = "info") -> str:
    """A visible note (``kind``: ``info``, ``warning``)."""
    return f'<div class="note note-{kind}">{text}</div>'


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.{digits}g}"
    try:
        import pandas as pd

        if v is pd.NA:
            return ""
    except ImportError:  # pragma: no cover
        pass
    return str(v)


def html_table(df, max_rows: int = 200, highlight: Sequence[int] = (), digits: int = 4,
               cls: str = "data", scroll: bool = True) -> str:
    """A DataFrame as a plain HTML table (numbers rounded, ``highlight``: row positions to mark)."""
    cols = list(df.columns)
    head = "".join(f"<th>{esc(str(c))}</th>" for c in cols)
    body = []
    for i, row in enumerate(df.head(max_rows).itertuples(index=False)):
        tr = ' class="hl"' if i in highlight else ""
        tds = "".join(
            f'<td class="num">{esc(_fmt(v, digits))}</td>' if isinstance(v, (int, float)) and not isinstance(v, bool)
            else f"<td>{esc(_fmt(v, digits))}</td>" for v in row)
        body.append(f"<tr{tr}>{tds}</tr>")
    more = f'<p class="small">{len(df) - max_rows} more rows not shown</p>' if len(df) > max_rows else ""
    wrap = "table-wrap" if scroll else "table-plain"
    return f'<div class="{wrap}"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>{more}'


_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
       margin: 0; color: #1d2330; background: #fff; }
header { background: #17324d; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header .sub { opacity: 0.85; font-size: 14px; }
main { padding: 8px 28px 40px 28px; max-width: 1280px; }
nav { font-size: 13px; margin: 12px 0; }
nav a { margin-right: 14px; color: #17324d; }
section { border-top: 1px solid #d6dbe3; padding-top: 6px; margin-top: 18px; }
h2 { font-size: 18px; margin: 10px 0 8px 0; }
h3 { font-size: 15px; margin: 14px 0 6px 0; }
.intro { font-size: 14px; color: #3a4252; max-width: 980px; }
table.data, table.meta { border-collapse: collapse; font-size: 12.5px; margin: 6px 0; }
table.data th, table.data td, table.meta th, table.meta td { border: 1px solid #d6dbe3; padding: 3px 7px; }
table.data th { background: #eef1f5; position: sticky; top: 0; }
table.meta th { text-align: left; background: #eef1f5; font-weight: 600; vertical-align: top; }
table.meta td { font-family: ui-monospace, "DejaVu Sans Mono", monospace; white-space: pre-wrap; word-break: break-all; max-width: 900px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.hl td { background: #fff3c4; }
.table-wrap { max-height: 460px; overflow: auto; display: inline-block; max-width: 100%; }
.note { padding: 8px 12px; border-radius: 4px; margin: 8px 0; font-size: 14px; }
.note-info { background: #e8f1fb; border-left: 4px solid #3b7dd8; }
.note-warning { background: #fdf0e0; border-left: 4px solid #e08a1e; }
.small { font-size: 12px; color: #5a6272; }
.cv { margin: 6px 0 14px 0; }
.cv-caption, .fig-caption { font-size: 13px; color: #3a4252; margin: 2px 0; }
.answer { background: #c9f0c9; font-weight: 600; }
.the { background: #f7d4d4; }
code, .tok { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
.tok { background: #eef1f5; padding: 0 3px; border-radius: 3px; white-space: pre; }
.flex { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
"""


class Report:
    """An HTML report: a title, metadata (model, revision, prompts, seed, version, command...),
    and sections.  ``html()`` gives the page; ``save(path)`` writes it; in Jupyter the report
    renders inline (``_repr_html_``, inside an isolated iframe)."""

    def __init__(self, title: str, kind: str, meta: dict | None = None, sections: Iterable[Section] = (),
                 source: str | None = None):
        self.title = title
        self.kind = kind
        self.meta = dict(meta or {})
        self.sections: list[Section] = list(sections)
        self.source = source
        self.path: Path | None = None
        self._html: str | None = None

    def add(self, section: Section | None) -> None:
        if section is not None:
            self.sections.append(section)
            self._html = None

    @property
    def figures(self) -> dict:
        """Every plotly figure by ``<section id>-<n>`` (save one with ``fig.write_image``
        when kaleido is installed, or ``fig.write_html``)."""
        out = {}
        for s in self.sections:
            for i, f in enumerate(s.figures):
                out[f"{s.id}-{i}"] = f
        return out

    def save_figures(self, directory, format: str = "svg", scale: float = 2.0) -> list[Path]:
        """Write every chart as ``<section>-<n>.<format>`` (``svg``, ``png`` or ``pdf``) for a
        paper, with plotly's static export (needs ``pip install kaleido`` and a Chromium, e.g.
        Debian's, found on the PATH or through ``$MECHTRUNC_CHROMIUM``).  In the page itself,
        each chart's camera button downloads it as SVG."""
        import os

        if format not in ("svg", "png", "pdf"):
            raise ValueError(f"unknown figure format {format!r}; valid: svg, png, pdf")
        try:
            import kaleido  # noqa: F401
        except ImportError:
            raise ValueError("saving figures as images needs kaleido: pip install kaleido "
                             "(or use the camera button of each chart in the HTML page)") from None
        from mechtrunc.report.browser import find_chromium

        chromium = find_chromium()
        if chromium and "BROWSER_PATH" not in os.environ:  # kaleido's way to find a browser
            os.environ["BROWSER_PATH"] = chromium
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, fig in self.figures.items():
            p = out / f"{name}.{format}"
            fig.write_image(str(p), format=format, scale=scale if format == "png" else 1, width=1100)
            paths.append(p)
        return paths

    # ------------------------------------------------------------------------------------
    def html(self) -> str:
        if self._html is None:
            self._html = self._render()
        return self._html

    def _render(self) -> str:
        from mechtrunc.report import bundles

        plotly_done = cv_done = False
        n_fig = n_cv = 0
        body = []
        for s in self.sections:
            chunks = [f'<section id="{esc(s.id)}" data-section="{esc(s.id)}"><h2>{esc(s.title)}</h2>']
            if s.intro:
                chunks.append(f'<div class="intro">{s.intro}</div>')
            for part in s.parts:
                if isinstance(part, str):
                    chunks.append(part)
                elif isinstance(part, CircuitsView):
                    if not cv_done:
                        chunks.append(f"<script>{bundles.circuitsvis_js()}</script>")
                        cv_done = True
                    n_cv += 1
                    div = f"{s.id}-cv{n_cv}"
                    style = f' style="min-height:{int(part.height)}px"' if part.height else ""
                    cap = f'<div class="cv-caption">{part.caption}</div>' if part.caption else ""
                    props = bundles.circuitsvis_props(part.props)
                    chunks.append(
                        f'<div class="cv">{cap}<div id="{esc(div)}" class="cv-view" '
                        f'data-component="{esc(part.component)}"{style}></div></div>'
                        f"<script>CircuitsVis.render({json.dumps(div)}, CircuitsVis.{part.component}, {props});</script>")
                elif _is_plotly(part):
                    n_fig += 1
                    div = f"{s.id}-fig{n_fig}"
                    cfg = {"displaylogo": False, "responsive": True,
                           "toImageButtonOptions": {"format": "svg", "filename": div}}
                    chunks.append('<div class="fig">' + part.to_html(
                        full_html=False, include_plotlyjs=not plotly_done, include_mathjax=False,
                        div_id=div, config=cfg) + "</div>")
                    plotly_done = True
                else:
                    raise TypeError(f"unsupported report part {type(part).__name__}")
            chunks.append("</section>")
            body.append("".join(chunks))
        nav = " ".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in self.sections)
        meta_rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(_fmt(v) if not isinstance(v, (dict, list)) else json.dumps(v))}</td></tr>"
                            for k, v in self.meta.items())
        sub = esc(self.source or "")
        return (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(self.title)}</title><style>{_CSS}</style>"
            "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script></head>\n"
            f"<body data-report-kind='{esc(self.kind)}'><header><h1>{esc(self.title)}</h1><div class='sub'>{sub}</div></header>"
            f"<main><nav>{nav}</nav><section id='about' data-section='about'><h2>About this report</h2>"
            f"<table class='meta'>{meta_rows}</table></section>\n" + "\n".join(body) + "\n</main></body></html>\n"
        )

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.html(), encoding="utf-8")
        tmp.replace(path)
        self.path = path
        return path

    def _repr_html_(self) -> str:
        # an iframe keeps the page's scripts and styles apart from the notebook's
        return (f'<iframe srcdoc="{html.escape(self.html(), quote=True)}" '
                'style="width:100%;height:720px;border:1px solid #ccc"></iframe>')

    def __repr__(self) -> str:
        where = f", saved to {str(self.path)!r}" if self.path else ""
        return f"<Report {self.kind!r}: {len(self.sections)} sections{where}>"
