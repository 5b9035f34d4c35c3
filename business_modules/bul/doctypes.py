"""The document types, as data: fixed instructions, sections, a typed input schema and a template.

Each type's template is Jinja2 rendered in a sandbox (`business_modules.bul.assembly`):
it places the user's own names and figures verbatim (the LLM never retypes
them) and the LLM's section texts under the type's fixed headings. To add a
type, append a `DocumentTypeSpec` to `DOCUMENT_TYPES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from business_modules.bul import constants as C
from business_modules.bul.errors import UnknownDocumentTypeError

Short = Annotated[str, StringConstraints(strip_whitespace=True, max_length=C.MAX_FIELD_CHARS)]
Notes = Annotated[str, StringConstraints(strip_whitespace=True, max_length=C.MAX_NOTES_CHARS)]


class Figure(BaseModel):
    """A figure the user gives: shown in the document exactly as written."""

    model_config = ConfigDict(extra="forbid")

    label: Short = Field(min_length=1)
    value: Short = Field(min_length=1)


class CommonInputs(BaseModel):
    """Fields every document type accepts; all optional, unknown fields refused."""

    model_config = ConfigDict(extra="forbid")

    company_name: Short | None = None
    audience: Short | None = None
    figures: list[Figure] = Field(default_factory=list, max_length=C.MAX_LIST_ITEMS)
    notes: Notes | None = None


class BusinessPlanInputs(CommonInputs):
    industry: Short | None = None
    location: Short | None = None
    target_market: Short | None = None
    funding_sought: Short | None = None


class ProposalInputs(CommonInputs):
    client_name: Short | None = None
    project_name: Short | None = None
    budget: Short | None = None
    timeline: Short | None = None


class MarketingPlanInputs(CommonInputs):
    product: Short | None = None
    budget: Short | None = None
    period: Short | None = None
    channels: list[Short] = Field(default_factory=list, max_length=C.MAX_LIST_ITEMS)


class SopInputs(CommonInputs):
    procedure_name: Short | None = None
    department: Short | None = None
    process_owner: Short | None = None
    tools: list[Short] = Field(default_factory=list, max_length=C.MAX_LIST_ITEMS)


class JobDescriptionInputs(CommonInputs):
    job_title: Short | None = None
    department: Short | None = None
    location: Short | None = None
    employment_type: Short | None = None
    salary_range: Short | None = None


class ExecutiveSummaryInputs(CommonInputs):
    subject: Short | None = None
    period: Short | None = None


class MeetingMinutesInputs(CommonInputs):
    meeting_title: Short | None = None
    date: Short | None = None
    attendees: list[Short] = Field(default_factory=list, max_length=C.MAX_LIST_ITEMS * 2)
    agenda: list[Short] = Field(default_factory=list, max_length=C.MAX_LIST_ITEMS)
    decisions: list[Short] = Field(default_factory=list, max_length=C.MAX_LIST_ITEMS)


class FinancialCommentaryInputs(CommonInputs):
    period: Short | None = None
    currency: Short | None = None
    revenue: Short | None = None
    expenses: Short | None = None
    net_income: Short | None = None


@dataclass(frozen=True, slots=True)
class SectionSpec:
    """One fixed section: its key (in the outline JSON), heading and ask."""

    key: str
    heading: str
    ask: str


@dataclass(frozen=True, slots=True)
class DocumentTypeSpec:
    """Everything BUL knows about one document type."""

    name: str
    title: str
    description: str
    instructions: str
    sections: tuple[SectionSpec, ...]
    inputs: type[CommonInputs]
    template: str
    export_type: str
    """`business_modules.export.DocumentType` value written as the file's category."""
    keywords: tuple[str, ...]
    """Words of a query that point to this type when the caller names none."""
    title_field: str = "company_name"

    def input_schema(self) -> dict[str, Any]:
        return self.inputs.model_json_schema()


def _s(key: str, heading: str, ask: str) -> SectionSpec:
    return SectionSpec(key=key, heading=heading, ask=ask)


_BODY = """
{%- for s in sections %}

## {{ s.heading }}

{{ s.body }}
{%- endfor %}
"""

_HEAD = "# {{ title }}\n\n{% include '_facts' %}"

FACTS_TEMPLATE = """
{%- if facts -%}
| Fact | Value |
|---|---|
{% for label, value in facts -%}
| {{ label | cell }} | {{ value | cell }} |
{% endfor %}
{%- endif -%}
{%- if inputs.notes %}

> {{ inputs.notes | cell }}
{%- endif %}"""

RULES = (" Write plain paragraphs, no headings. Never restate the user's names or figures: the document already "
         "shows them exactly as given. Use the tone, length and language the request asks for.")

DOCUMENT_TYPES: tuple[DocumentTypeSpec, ...] = (
    DocumentTypeSpec(
        name="business_plan",
        title="Business plan",
        description="A plan for a company or venture: market, offer, operations, finances.",
        instructions="You write business plans for small and medium companies. Be concrete and realistic." + RULES,
        sections=(
            _s("summary", "Executive summary", "Summarise the business and what it needs."),
            _s("market", "Market analysis", "Describe the market, customers and competitors."),
            _s("offer", "Products and services", "Describe what the company sells and why it wins."),
            _s("operations", "Operations", "Describe how the company runs day to day."),
            _s("finance", "Financial plan", "Comment on the financial outlook and the funding need."),
        ),
        inputs=BusinessPlanInputs,
        template=_HEAD + "{% if inputs.industry %}\n\n**Industry:** {{ inputs.industry }}{% endif %}" + _BODY,
        export_type="report",
        keywords=("business plan", "plan de negocio", "startup", "venture", "funding"),
    ),
    DocumentTypeSpec(
        name="proposal",
        title="Proposal",
        description="A project or sales proposal to a client: need, approach, deliverables, price.",
        instructions="You write client proposals that are clear about scope, approach and value." + RULES,
        sections=(
            _s("need", "Understanding of the need", "Restate the client's need in your own words."),
            _s("approach", "Approach", "Describe the approach and its phases."),
            _s("deliverables", "Deliverables", "List what the client receives."),
            _s("terms", "Investment and terms", "Comment on budget, timeline and terms."),
        ),
        inputs=ProposalInputs,
        template=_HEAD + "{% if inputs.client_name %}\n\n**Prepared for:** {{ inputs.client_name }}{% endif %}"
                 + _BODY,
        export_type="proposal",
        keywords=("proposal", "propuesta", "quote", "bid", "tender"),
        title_field="project_name",
    ),
    DocumentTypeSpec(
        name="marketing_plan",
        title="Marketing plan",
        description="Goals, audience, channels, budget and measures of a marketing effort.",
        instructions="You write marketing plans with measurable goals and clear channel choices." + RULES,
        sections=(
            _s("goals", "Goals", "State the marketing goals."),
            _s("audience", "Target audience", "Describe the audience and its needs."),
            _s("channels", "Channels and tactics", "Describe the channels and tactics."),
            _s("measures", "Measurement", "Describe how success is measured."),
        ),
        inputs=MarketingPlanInputs,
        template=_HEAD + "{% if inputs.channels %}\n\n**Channels:** {{ inputs.channels | join(', ') }}{% endif %}"
                 + _BODY,
        export_type="report",
        keywords=("marketing", "campaign", "brand", "advertising"),
        title_field="product",
    ),
    DocumentTypeSpec(
        name="sop",
        title="Standard operating procedure",
        description="A step-by-step procedure: purpose, scope, roles, steps, records.",
        instructions="You write standard operating procedures that anyone on the team can follow." + RULES,
        sections=(
            _s("purpose", "Purpose and scope", "State the purpose and scope of the procedure."),
            _s("roles", "Roles and responsibilities", "Describe who does what."),
            _s("steps", "Procedure", "Describe the steps in order."),
            _s("records", "Records and review", "Describe records kept and how the procedure is reviewed."),
        ),
        inputs=SopInputs,
        template=_HEAD + "{% if inputs.process_owner %}\n\n**Owner:** {{ inputs.process_owner }}{% endif %}"
                 "{% if inputs.tools %}\n\n**Tools:** {{ inputs.tools | join(', ') }}{% endif %}" + _BODY,
        export_type="manual",
        keywords=("sop", "procedure", "standard operating", "process", "checklist"),
        title_field="procedure_name",
    ),
    DocumentTypeSpec(
        name="job_description",
        title="Job description",
        description="A role's purpose, responsibilities, requirements and offer.",
        instructions="You write inclusive, precise job descriptions." + RULES,
        sections=(
            _s("role", "About the role", "Describe the role and its purpose."),
            _s("responsibilities", "Responsibilities", "Describe the main responsibilities."),
            _s("requirements", "Requirements", "Describe the skills and experience needed."),
            _s("offer", "What we offer", "Describe what the company offers."),
        ),
        inputs=JobDescriptionInputs,
        template=_HEAD + "{% if inputs.salary_range %}\n\n**Salary range:** {{ inputs.salary_range }}{% endif %}"
                 + _BODY,
        export_type="other",
        keywords=("job description", "hiring", "vacancy", "role", "recruit", "job"),
        title_field="job_title",
    ),
    DocumentTypeSpec(
        name="executive_summary",
        title="Executive summary",
        description="A one-page summary for decision makers: situation, findings, recommendation.",
        instructions="You write short executive summaries for busy decision makers." + RULES,
        sections=(
            _s("situation", "Situation", "Describe the situation."),
            _s("findings", "Key findings", "State the key findings."),
            _s("recommendation", "Recommendation", "State the recommendation and next steps."),
        ),
        inputs=ExecutiveSummaryInputs,
        template=_HEAD + _BODY,
        export_type="memo",
        keywords=("executive summary", "summary", "brief", "overview"),
        title_field="subject",
    ),
    DocumentTypeSpec(
        name="meeting_minutes",
        title="Meeting minutes",
        description="Minutes of a meeting: attendees, discussion, decisions, actions.",
        instructions="You write neutral, factual meeting minutes." + RULES,
        sections=(
            _s("discussion", "Discussion", "Summarise the discussion by agenda item."),
            _s("actions", "Action items", "List the follow-up actions."),
            _s("next", "Next meeting", "Say what the next meeting should cover."),
        ),
        inputs=MeetingMinutesInputs,
        template=_HEAD
        + "{% if inputs.date %}\n\n**Date:** {{ inputs.date }}{% endif %}"
        "{% if inputs.attendees %}\n\n**Attendees:** {{ inputs.attendees | join(', ') }}{% endif %}"
        "{% if inputs.agenda %}\n\n**Agenda:**\n{% for item in inputs.agenda %}\n- {{ item | cell }}{% endfor %}"
        "{% endif %}"
        "{% if inputs.decisions %}\n\n**Decisions:**\n{% for item in inputs.decisions %}\n- {{ item | cell }}"
        "{% endfor %}{% endif %}" + _BODY,
        export_type="memo",
        keywords=("minutes", "meeting", "acta", "standup"),
        title_field="meeting_title",
    ),
    DocumentTypeSpec(
        name="financial_report_commentary",
        title="Financial report commentary",
        description="Management commentary on a period's financial results.",
        instructions="You write management commentary on financial results, careful and balanced." + RULES,
        sections=(
            _s("overview", "Overview of the period", "Give an overview of the period."),
            _s("revenue", "Revenue", "Comment on revenue."),
            _s("costs", "Costs and margins", "Comment on costs and margins."),
            _s("outlook", "Outlook", "Comment on the outlook."),
        ),
        inputs=FinancialCommentaryInputs,
        template=_HEAD + "{% if inputs.period %}\n\n**Period:** {{ inputs.period }}{% endif %}" + _BODY,
        export_type="report",
        keywords=("financial", "earnings", "results", "quarter", "revenue", "p&l"),
        title_field="period",
    ),
)

BY_NAME: dict[str, DocumentTypeSpec] = {spec.name: spec for spec in DOCUMENT_TYPES}

_ALIASES = {"standard_operating_procedure": "sop", "financial_commentary": "financial_report_commentary",
            "minutes": "meeting_minutes", "plan": "business_plan"}


def get_document_type(name: str) -> DocumentTypeSpec:
    """The type called ``name`` (case and dashes ignored); `UnknownDocumentTypeError` lists the known ones."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    try:
        return BY_NAME[key]
    except KeyError:
        raise UnknownDocumentTypeError(
            f"unknown document type {name[:64]!r}; choose one of {', '.join(BY_NAME)}") from None


def infer_document_type(query: str, business_area: str | None = None) -> DocumentTypeSpec:
    """The type whose keywords the query mentions first (business plan when none does)."""
    text = f"{query} {business_area or ''}".lower()
    best: tuple[int, DocumentTypeSpec] | None = None
    for spec in DOCUMENT_TYPES:
        for word in spec.keywords:
            at = text.find(word)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, spec)
    return best[1] if best else BY_NAME["business_plan"]
