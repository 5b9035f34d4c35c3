"""HTML sanitising (nh3/ammonia): what user Markdown may put into a page.

Raw HTML in Markdown is allowed through the parser and cleaned here, so
harmless markup (``<b>``, ``<sup>``, tables) survives while scripts, event
handlers, ``javascript:`` URLs and remote resources do not. Images are kept
only as ``data:image/...`` URIs: a rendered file never fetches anything.
"""

from __future__ import annotations

import re

import nh3

from business_modules.export import constants as C

_ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "col", "colgroup", "dd", "del",
    "details", "dfn", "div", "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small",
    "span", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr",
    "u", "ul", "var", "wbr",
}  # fmt: skip

_ALLOWED_ATTRIBUTES = {
    "*": {"title", "lang", "dir"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "ol": {"start"},
    "th": {"style", "colspan", "rowspan"},
    "td": {"style", "colspan", "rowspan"},
    **{f"h{level}": {"id"} for level in range(1, 7)},
}

_DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]+$")
_NUMBER = re.compile(r"^\d{1,5}$")


def is_allowed_image_uri(uri: str) -> bool:
    """True for a base64 ``data:image/(png|jpeg|gif|webp)`` URI within the size limit."""
    return len(uri) <= C.MAX_IMAGE_BYTES * 4 // 3 + 64 and _DATA_IMAGE.match(uri) is not None


def _filter_attribute(element: str, attribute: str, value: str) -> str | None:
    if attribute == "src":
        return value if element == "img" and is_allowed_image_uri(value) else None
    if attribute == "href":
        return None if value.strip().lower().startswith("data:") else value
    if attribute in ("width", "height", "start", "colspan", "rowspan"):
        return value if _NUMBER.match(value.strip()) else None
    return value


_CLEANER = nh3.Cleaner(
    tags=_ALLOWED_TAGS,
    clean_content_tags={"script", "style", "template", "iframe", "object", "noscript", "textarea"},
    attributes=_ALLOWED_ATTRIBUTES,
    attribute_filter=_filter_attribute,
    url_schemes={"http", "https", "mailto", "data"},
    filter_style_properties={"text-align"},
    link_rel="noopener noreferrer",
)


def sanitize_html(fragment: str) -> str:
    """Clean an HTML fragment produced from user Markdown."""
    return _CLEANER.clean(fragment)
