"""Sample content shared by the export tests: every construct the renderers
must carry through (headings, tables, lists, code, quotes, non-ASCII, images)
plus the hostile bits the sanitiser must remove."""

from __future__ import annotations

import base64
import functools
import shutil
import struct
import subprocess
import zlib
from datetime import datetime, timezone

import pytest

UNICODE = "Café – 東京 – Ünïcödé"
CREATED = datetime(2026, 3, 14, 9, 26, 53, tzinfo=timezone.utc)


def tiny_png(rgb: tuple[int, int, int] = (255, 0, 0), size: int = 4) -> bytes:
    """A valid ``size`` x ``size`` PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * size
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * size))
        + chunk(b"IEND", b"")
    )


PNG_URI = "data:image/png;base64," + base64.b64encode(tiny_png()).decode()


def structured_payload(*, fmt: str, remote_host: str = "127.0.0.1:9", **extra) -> dict:
    """An original-style ``{title, sections[]}`` request."""
    payload = {
        "content": {
            "title": f"Quarterly report {UNICODE}",
            "sections": [
                {
                    "heading": "Introduction",
                    "content": (
                        f"Plain paragraph with **bold**, *italic* and `code`. {UNICODE}.\n\n"
                        "- First bullet\n- Second bullet with [a link](https://example.com)\n"
                        "  - Nested bullet\n\n"
                        "<script>alert('xss')</script>\n\n"
                        "Click [here](javascript:alert(1)) or <a href=\"javascript:alert(2)\">there</a>"
                        " <img src=x onerror=\"alert(3)\">\n\n"
                        f"![red square]({PNG_URI})\n\n"
                        f"![remote](http://{remote_host}/tracker.png)\n"
                    ),
                },
                {
                    "heading": "Results",
                    "content": (
                        "| Region | Revenue | Note |\n|:--|--:|:-:|\n"
                        f"| Zürich | 1200 | {UNICODE} |\n| 東京 | 3400 | up |\n\n"
                        "1. Ordered one\n2. Ordered two\n\n"
                        "```python\nprint('# not a heading')\n```\n\n> A quoted remark.\n"
                    ),
                    "subsections": [{"heading": "Details", "content": "3. Restarted list three\n4. Four\n"}],
                },
                {"heading": "Next steps", "content": ["Paragraph one.", "Paragraph two."]},
            ],
        },
        "format": fmt,
        "document_type": "report",
        "quality_level": "professional",
        "metadata": {
            "author": "Zoë Ångström",
            "subject": "Revenue by region",
            "keywords": ["revenue", "regions", "東京"],
            "created": CREATED.isoformat(),
        },
    }
    payload.update(extra)
    return payload


SECTION_TITLES = ["Introduction", "Results", "Next steps"]

CJK_FONT_PACKAGE = "fonts-droid-fallback"


@functools.cache
def has_cjk_font() -> bool:
    """Whether fontconfig knows a font with Japanese glyphs (WeasyPrint needs one for 東京)."""
    if shutil.which("fc-list") is None:
        return False
    found = subprocess.run(["fc-list", ":lang=ja"], capture_output=True, text=True, timeout=30, check=False)
    return bool(found.stdout.strip())


requires_cjk_font = pytest.mark.skipif(
    not has_cjk_font(),
    reason=f"PDF text with CJK needs a CJK font: apt-get install {CJK_FONT_PACKAGE}",
)
