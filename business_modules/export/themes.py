"""Themes: one palette and font set per name, used by every format.

HTML and PDF get it as CSS (``templates/theme.css.jinja`` filled from the
palette), DOCX as style colours and fonts, PPTX as title colours, fonts and an
accent bar, so one theme name looks the same across formats.
"""

from __future__ import annotations

from dataclasses import dataclass

from business_modules.export.kinds import QualityLevel


@dataclass(frozen=True, slots=True)
class Theme:
    """A palette (``#RRGGBB`` strings) plus font choices per medium."""

    name: str
    primary: str
    """Headings, title, table header background."""
    accent: str
    """Rules, links, the accent bar."""
    text: str
    muted: str
    """Footer, captions, table of contents leaders."""
    stripe: str
    """Background of every other table row."""
    css_body_fonts: str
    css_heading_fonts: str
    office_body_font: str
    office_heading_font: str

    @staticmethod
    def rgb(colour: str) -> tuple[int, int, int]:
        """``"#1F3A5F"`` -> ``(31, 58, 95)``."""
        value = colour.lstrip("#")
        return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)

    @staticmethod
    def hex(colour: str) -> str:
        """``"#1F3A5F"`` -> ``"1F3A5F"`` (the form Office XML and python-docx use)."""
        return colour.lstrip("#").upper()


# DejaVu ships with Debian and covers Latin/Greek/Cyrillic; fontconfig falls
# back to Droid Sans Fallback (fonts-droid-fallback) for CJK in PDFs.
_SANS = '"Liberation Sans", Arial, "DejaVu Sans", "Droid Sans Fallback", sans-serif'
_SERIF = 'Georgia, "Liberation Serif", "DejaVu Serif", "Droid Sans Fallback", serif'

THEMES: dict[str, Theme] = {
    theme.name: theme
    for theme in (
        Theme(
            name="professional",
            primary="#1F3A5F",
            accent="#2E75B6",
            text="#222222",
            muted="#6B7280",
            stripe="#EEF3F9",
            css_body_fonts=_SANS,
            css_heading_fonts=_SANS,
            office_body_font="Calibri",
            office_heading_font="Calibri Light",
        ),
        Theme(
            name="modern",
            primary="#0F766E",
            accent="#F59E0B",
            text="#1F2937",
            muted="#6B7280",
            stripe="#ECFDF5",
            css_body_fonts=_SANS,
            css_heading_fonts=_SANS,
            office_body_font="Segoe UI",
            office_heading_font="Segoe UI Semibold",
        ),
        Theme(
            name="classic",
            primary="#7F1D1D",
            accent="#B45309",
            text="#1C1917",
            muted="#78716C",
            stripe="#FAF5EF",
            css_body_fonts=_SERIF,
            css_heading_fonts=_SERIF,
            office_body_font="Georgia",
            office_heading_font="Cambria",
        ),
        Theme(
            name="minimal",
            primary="#111111",
            accent="#555555",
            text="#111111",
            muted="#777777",
            stripe="#F5F5F5",
            css_body_fonts=_SANS,
            css_heading_fonts=_SANS,
            office_body_font="Arial",
            office_heading_font="Arial",
        ),
    )
}

DEFAULT_THEME_BY_QUALITY: dict[QualityLevel, str] = {
    QualityLevel.DRAFT: "minimal",
    QualityLevel.STANDARD: "professional",
    QualityLevel.PROFESSIONAL: "professional",
    QualityLevel.PREMIUM: "modern",
    QualityLevel.ENTERPRISE: "classic",
}


def get_theme(name: str | None, quality_level: QualityLevel = QualityLevel.PROFESSIONAL) -> Theme:
    """The named theme, or the quality level's default; unknown names raise."""
    key = (name or DEFAULT_THEME_BY_QUALITY[quality_level]).strip().lower()
    try:
        return THEMES[key]
    except KeyError:
        raise ValueError(f"unknown theme {name!r}; choose one of {sorted(THEMES)}") from None
