"""Text from a visitor's files, made safe to show where Streamlit renders Markdown.

A class-folder name, a file name, a DICOM tag value or a layer name comes from a visitor and
may hold Markdown (`**bold**`, `![image](url)`, `[link](javascript:...)`), Streamlit's own
directives (`:red[...]`, `$LaTeX$`) or HTML. Captions, labels, `st.markdown`, `st.caption`,
`st.error` and the rest all render Markdown, so every such string goes through `plain` first:
each ASCII punctuation character is backslash-escaped (CommonMark lets any of them be), and
line breaks and other control characters become spaces, so the text reads exactly as written
and nothing in it is interpreted.
"""

from __future__ import annotations

import string

_ESCAPED = {ord(character): "\\" + character for character in string.punctuation}
_CONTROL = {code: " " for code in (*range(0x00, 0x20), 0x7F, 0x85, 0x2028, 0x2029)}
_TABLE = _ESCAPED | _CONTROL


def plain(text: object) -> str:
    """`text` as Markdown that renders as exactly these characters, on one line:
    `plain("**bold**")` is `\\*\\*bold\\*\\*`, which shows as **bold** with its stars."""
    return str(text).translate(_TABLE)
