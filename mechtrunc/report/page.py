"""One self-contained HTML page made of sections.

A :class:`Section` is a titled list of parts; a part is raw HTML (``str``, see :func:`html_table`
and :func:`note`), a plotly figure, or a :class:`CircuitsView` (a circuitsvis React component and
its props).  :class:`Report` lays the sections out in one page that works from ``file://`` with
no network: plotly's JavaScript is inlined once (before the first chart) and circuitsvis' bundle
once (before the first view); each view is then a small ``CircuitsVis.render(...)`` call.  No
CDN, no web font (system font stack).

The page is rendered from jinja2 templates with autoescaping (``mechtrunc/report/templates/``,
package data): every title, label, table cell and metadata value is escaped there.  A section's
intro and its string parts are markup written by the section builders; a value they put into
markup goes through :func:`fragment` (``fragment("<code>{path}</code>", path=p)``), which
escapes it the same way, so no builder escapes by hand.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from markupsafe import Markup

from mechtrunc._checks import check_choice

__all__ = ["Section", "CircuitsView", "Report", "html_table", "note", "fragment", "render"]


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("mechtrunc.report", "templates"), autoescape=True,
                              trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)


def render(template: str, **values) -> Markup:
    """The package template ``template`` (``mechtrunc/report/templates/``) rendered with
    ``values``, autoescaped (a :class:`markupsafe.Markup` value is inserted as it is)."""
    return Markup(_environment().get_template(template).render(**values))


def fragment(markup: str, /, *args, **values) -> Markup:
    """``markup`` (HTML written in the code) with ``{}`` / ``{name}`` fields filled by ``values``,
    each escaped unless it is markup itself (:class:`markupsafe.Markup`, e.g. another fragment);
    format specs work as in :meth:`str.format` (``{p:.4f}``)."""
    return Markup(markup).format(*args, **values)


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


def note(text: str, kind: str = "info") -> Markup:
    """A visible note (``kind``: ``info``, ``warning``); ``text`` is markup (plain text with
    values: :func:`fragment`)."""
    return render("note.html.j2", text=Markup(text), kind=kind)


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
               cls: str = "data", scroll: bool = True) -> Markup:
    """A DataFrame as a plain HTML table (numbers rounded, ``highlight``: row positions to mark)."""
    rows = [{"highlight": i in highlight,
             "cells": [(_fmt(v, digits), isinstance(v, (int, float)) and not isinstance(v, bool)) for v in row]}
            for i, row in enumerate(df.head(max_rows).itertuples(index=False))]
    return render("table.html.j2", wrap="table-wrap" if scroll else "table-plain", cls=cls,
                  columns=[str(c) for c in df.columns], rows=rows, more=max(0, len(df) - max_rows))


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

        check_choice("figure format", format, ("svg", "png", "pdf"))
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
        sections = []
        for s in self.sections:
            parts = []
            for part in s.parts:
                if isinstance(part, str):
                    parts.append(Markup(part))  # markup written by a section builder
                elif isinstance(part, CircuitsView):
                    n_cv += 1
                    parts.append(render(
                        "circuits_view.html.j2", bundle=None if cv_done else Markup(bundles.circuitsvis_js()),
                        div=f"{s.id}-cv{n_cv}", component=part.component,
                        caption=Markup(part.caption) if part.caption else None,
                        height=int(part.height) if part.height else None,
                        props=Markup(bundles.circuitsvis_props(part.props))))
                    cv_done = True
                elif _is_plotly(part):
                    n_fig += 1
                    div = f"{s.id}-fig{n_fig}"
                    cfg = {"displaylogo": False, "responsive": True,
                           "toImageButtonOptions": {"format": "svg", "filename": div}}
                    parts.append(Markup('<div class="fig">' + part.to_html(
                        full_html=False, include_plotlyjs=not plotly_done, include_mathjax=False,
                        div_id=div, config=cfg) + "</div>"))
                    plotly_done = True
                else:
                    raise TypeError(f"unsupported report part {type(part).__name__}")
            sections.append({"id": s.id, "title": s.title, "intro": Markup(s.intro) if s.intro else None,
                             "parts": parts})
        meta = [(str(k), _fmt(v) if not isinstance(v, (dict, list)) else json.dumps(v)) for k, v in self.meta.items()]
        return str(render("page.html.j2", title=self.title, kind=self.kind, source=self.source or "", meta=meta,
                          sections=sections))

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
        return str(fragment('<iframe srcdoc="{}" style="width:100%;height:720px;border:1px solid #ccc"></iframe>',
                            self.html()))

    def __repr__(self) -> str:
        where = f", saved to {str(self.path)!r}" if self.path else ""
        return f"<Report {self.kind!r}: {len(self.sections)} sections{where}>"
