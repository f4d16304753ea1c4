"""Markdown whose pictures show anywhere: an output's relative image links replaced by ``data:`` URIs.

A report in the store links its charts relative to itself (``![F1 per dataset](../chart/f1-per-dataset-….png)``),
which a file browser and ``rner report --out`` follow. A Prefect artifact is shown by the UI in a browser that
cannot reach the store, so there the images are embedded, base64 in the link itself (the UI's markdown renderer
shows them; tests/test_ui.py checks that the picture loads).

Usage::

    files = {e.path: e for e in manifest.files}
    text = inline_images(markdown, entry.path, lambda p: store.read_file(address, files[p]) if p in files else None)
"""

from __future__ import annotations

import base64
import posixpath
import re
from collections.abc import Callable

IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<link>[^)\s]+)\)")
MEDIA_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def inline_images(markdown: str, path: str, read: Callable[[str], bytes | None]) -> str:
    """``markdown`` (the file at ``path``) with each image link relative to it embedded with the bytes
    ``read(<the linked path>)`` gives. URLs, unknown image types and files ``read`` does not have stay links."""

    def embed(match: re.Match[str]) -> str:
        link = match["link"]
        media = MEDIA_TYPES.get(posixpath.splitext(link)[1].lower())
        if media is None or ":" in link or link.startswith("/"):
            return match[0]
        data = read(posixpath.normpath(posixpath.join(posixpath.dirname(path), link)))
        if data is None:
            return match[0]
        return f"![{match['alt']}](data:{media};base64,{base64.b64encode(data).decode()})"

    return IMAGE.sub(embed, markdown)
