"""HTML built in Python with escaping by default: every str is text, only :class:`Markup` is
HTML.

The dashboard shows what users wrote — labels, SQL, results, errors, signal data — so nothing
is ever pasted into HTML as it is: :func:`element` escapes every child and attribute value that
is not already :class:`Markup`, and :func:`page` fills the one template with escaped values.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from string import Template

__all__ = ["Markup", "element", "escape", "join", "page"]


class Markup(str):
    """Text that is HTML already (built by :func:`element` or :func:`join`): not escaped
    again."""

    __slots__ = ()


def escape(value: object) -> Markup:
    """``value`` as HTML: markup as it is, anything else as escaped text (quotes too)."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def join(children: object) -> Markup:
    """Children (text, markup, None, or iterables of these) as one piece of markup."""
    if children is None:
        return Markup("")
    if isinstance(children, str):
        return escape(children)
    if isinstance(children, Iterable):
        return Markup("".join(join(child) for child in children))
    return escape(children)


def element(tag: str, attributes: Mapping[str, object] | None = None, *children: object) -> Markup:
    """``<tag attributes>children</tag>``, every value escaped.

    An attribute whose value is None or False is left out, True writes the bare name; the
    name ``class_`` is written ``class``. Void elements (input, br, meta, link) get no closing
    tag.
    """
    parts = [tag]
    for name, value in (attributes or {}).items():
        if value is None or value is False:
            continue
        key = name.rstrip("_").replace("_", "-")
        parts.append(key if value is True else f'{key}="{escape(value)}"')
    opening = "<" + " ".join(parts) + ">"
    if tag in _VOID:
        return Markup(opening)
    return Markup(f"{opening}{join(children)}</{tag}>")


_VOID = frozenset({"br", "hr", "input", "link", "meta", "img"})


@cache
def _layout() -> Template:
    text = (resources.files("pg_durable.ui") / "templates" / "layout.html").read_text("utf-8")
    return Template(text)


def page(*, title: str, role: str, nav: str, body: Markup, status_line: str) -> bytes:
    """A whole HTML page: the layout template with ``body`` in it (UTF-8)."""
    filled = _layout().substitute(
        title=escape(title),
        role=escape(role),
        status_line=escape(status_line),
        nav_instances=Markup(' aria-current="page"') if nav == "instances" else "",
        nav_workers=Markup(' aria-current="page"') if nav == "workers" else "",
        body=body,
    )
    return filled.encode("utf-8")
