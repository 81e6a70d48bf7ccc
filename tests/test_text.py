"""`ctdemo.app.text.plain`: a visitor's string renders as exactly its characters, never as markup.

The oracle is a real CommonMark renderer (markdown-it-py, installed with Keras's `rich`): what
it makes of `plain(text)` must be one paragraph of text equal to `text`, with no element in it.
"""

from __future__ import annotations

import html
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from ctdemo.app.text import plain

RENDERER = MarkdownIt("commonmark", {"html": True})  # HTML on: the worst case for an escape


def rendered_text(markdown: str) -> tuple[str, list[str]]:
    """The visible text of `markdown` rendered, and the names of the elements it made."""
    out = RENDERER.render(markdown).strip()
    tags = re.findall(r"<\s*([a-zA-Z][a-zA-Z0-9]*)", out)
    body = re.sub(r"^<p>|</p>$", "", out)
    return html.unescape(body), [tag for tag in tags if tag != "p"]


HOSTILE = [
    "**bold**",
    "![x](http://example.com/a.png)",
    "[y](javascript:alert(1))",
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    ":red[coloured] :material/home: $x^2$",
    "# heading",
    "- list item",
    "1. numbered",
    "> quote",
    "`code`",
    "~~struck~~ _em_ __strong__",
    "| a | b |",
    "&amp; &#x41;",
    "a\\*b",
    "line\nbreak\r\nand\ttab",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_render_as_their_own_characters(text):
    shown, elements = rendered_text(plain(text))
    assert elements == []
    assert shown == re.sub(r"[\x00-\x1f]", " ", text)


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60))
def test_any_string_renders_as_itself_on_one_line(text):
    shown, elements = rendered_text(plain(text))
    assert elements == []
    expected = re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]", " ", text)
    assert shown.strip() == expected.strip()  # a paragraph's edges are trimmed


def test_plain_text_is_unchanged_where_nothing_needs_escaping():
    assert plain("COVID 19 slices") == "COVID 19 slices"
    assert plain(42) == "42"
