"""pg_durable.ui.markup: HTML built with every value escaped unless it is markup already."""

from __future__ import annotations

from pg_durable.ui.markup import Markup, element, escape, join


def test_text_and_attribute_values_are_escaped() -> None:
    built = element("a", {"href": '/x?a=1&b="2"', "title": "<script>"}, "<b>&</b>", " 'quoted' ")
    assert built == (
        '<a href="/x?a=1&amp;b=&quot;2&quot;" title="&lt;script&gt;">'
        "&lt;b&gt;&amp;&lt;/b&gt; &#x27;quoted&#x27; </a>"
    )


def test_markup_is_not_escaped_twice() -> None:
    inner = element("code", None, "<x>")
    assert element("p", None, inner, ["a", None, [Markup("<br>"), "<"]]) == (
        "<p><code>&lt;x&gt;</code>a<br>&lt;</p>"
    )
    assert escape(inner) is inner
    assert join(None) == "" and join(42) == "42"


def test_attributes_none_false_true_and_names() -> None:
    built = element(
        "input", {"class_": "c", "data_live": 2, "required": True, "hidden": False, "x": None}
    )
    assert built == '<input class="c" data-live="2" required>'
