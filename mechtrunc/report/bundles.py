"""The JavaScript a report inlines: circuitsvis' bundle (read once, included once per page)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

__all__ = ["circuitsvis_js", "circuitsvis_props"]


@functools.lru_cache(maxsize=1)
def circuitsvis_js() -> str:
    """circuitsvis' browser bundle (``dist/cdn/iife.js``, defines the global ``CircuitsVis``);
    the same file its ``local_src`` inlines into every single view."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise FileNotFoundError(f"circuitsvis' bundled JavaScript is missing at {path}; reinstall circuitsvis")
    # as circuitsvis does: a literal closing tag would end the inline script
    return path.read_text(encoding="utf-8").replace("</script>", "")


def _plain(value, digits: int = 4):
    """Lists of plain numbers (floats rounded to ``digits`` significant decimals: a page with many
    attention patterns stays small)."""
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays
        value = value.tolist()
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, digits) for v in value]
    return value


def circuitsvis_props(props: dict) -> str:
    """Props as a JavaScript object literal safe inside a ``<script>`` element."""
    clean = {k: _plain(v) for k, v in props.items() if v is not None}
    return json.dumps(clean, ensure_ascii=True).replace("</", "<\\/")
