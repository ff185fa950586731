"""How text is shown: inert on a terminal and in Markdown, with every secret masked.

A model id, a server's error, a header value or a file's contents may hold control characters:
an escape sequence clears the screen or recolours it, a CR rewrites the line, an LF starts a new
one (a forged "PASS" row, a forged "all steps passed"), a bidi override reorders what is read.
`terminal_text` writes every character Python calls non-printable as its escape (`\\x1b`, `\\n`,
`\\u202e`), so one line stays one line and draws only itself. `markdown_text` does the same and
backslash-escapes what Markdown reads as markup, so a string cannot end a table cell, open a code
span, a link or raw HTML. Both mask secrets (`redact`) before anything is cut or escaped, and
again after (an escape could spell a short secret).

Every printer of the CLI goes through `terminal_text` (`cli.options.say`), and every string of
a report that came from outside goes through `markdown_text`.

>>> terminal_text("model\\x1b[2J\\nall steps passed")
'model\\\\x1b[2J\\\\nall steps passed'
>>> markdown_text("a | b `c`")
'a \\\\| b \\\\`c\\\\`'
"""

from __future__ import annotations

import re

from modal_llm_serving.redact import redact

__all__ = ["markdown_text", "terminal_text"]

# Markdown's inline markup: escapes, code spans, emphasis, links and images, raw HTML and
# autolinks, table cells, strikethrough, headings' closing hashes, entities, math.
_MARKUP = re.compile(r"([\\`*_\[\]<>|~#&$!])")


def _escaped(text: str) -> str:
    if text.isprintable():  # the usual case, checked in C
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def terminal_text(text: str, limit: int | None = None) -> str:
    """`text` as one inert line for a terminal: secrets masked, control characters (C0, C1, DEL,
    bidi and other format characters, line and paragraph separators, lone surrogates) escaped;
    cut to `limit` characters (with "…") after masking, so no part of a secret is left."""
    shown = _escaped(redact(text))
    if limit is not None and len(shown) > limit:
        shown = shown[:max(0, limit - 1)] + "…"
    return redact(shown)


def markdown_text(text: str, limit: int | None = None) -> str:
    """`text` as inert Markdown inline text (a table cell, a heading, a list item)."""
    return redact(_MARKUP.sub(r"\\\1", terminal_text(text, limit)))
