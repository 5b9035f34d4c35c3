"""Limits and tunables of Business Agents, each with its unit in the name.

The demo model's tokenizer is one byte per token, so characters are a fair
upper bound of tokens; the prompt limits keep a run's whole history inside
the `llm` application's context (4,096 tokens as shipped).
"""

from __future__ import annotations

MAX_INPUTS_CHARS = 8_000
"""Characters of a run's inputs serialised as JSON."""

MAX_AGENT_DEFINITION_CHARS = 32_000
"""Characters of a tenant agent's definition serialised as JSON."""

MAX_INSTRUCTIONS_CHARS = 2_000
"""Characters of one capability's instructions."""

MAX_CAPABILITIES = 12
"""Capabilities of one agent."""

MAX_AGENTS_PER_TENANT = 50
"""Agents one tenant may define."""

MAX_REASON_CHARS = 500
"""Characters of the reason a caller gives when rejecting a tool call."""

DEFAULT_MAX_STEPS = 8
MAX_STEPS_LIMIT = 32
"""Model calls of one run (each answers with one tool call), by default and at most."""

DEFAULT_TOKEN_BUDGET = 40_000
TOKEN_BUDGET_LIMIT = 400_000
"""Prompt plus completion tokens of all a run's model calls, by default and at most."""

STEP_MAX_TOKENS = 768
"""Completion tokens of one model call at most (a tool call's arguments must fit)."""

MAX_OUTPUT_CHARS = 600
"""Characters of a capability's longest result (its output schema's bound): a final answer fits one step."""

CONTEXT_TOKENS = 4_096
"""The LLM's context; a run whose next prompt may not fit is asked for its final answer instead."""

TOOL_RESULT_CHARS = 1_200
"""Characters of one tool result as the model sees it (the stored result is whole)."""

LLM_TIMEOUT_S = 120.0
"""Bound of one model call."""

LLM_RETRIES = 1
"""Extra attempts of a model call the LLM could not take (unavailable); a timeout is not retried."""

TOOL_TIMEOUT_S = 30.0
"""Bound of one tool call unless the tool says otherwise (a BUL document takes longer)."""

TOOL_RETRIES = 2
"""Extra attempts of an idempotent tool whose service was unavailable or timed out."""

TOOL_RETRY_BACKOFF_S = 0.5
"""Wait before the first retry; doubled for each further one."""

RUN_LEASE_S = 30.0
"""An unfinished run whose lease is older than this belongs to a dead replica and is resumed elsewhere."""

RUN_HEARTBEAT_S = 10.0
"""How often a live replica renews the leases of its runs and adopts runs dead replicas left."""

MAX_RUNNING_PER_TENANT = 4
"""Runs of one tenant stepping at once in one replica; the others wait queued."""

MAX_PENDING_PER_TENANT = 64
"""Unfinished runs of one tenant one replica accepts before 429."""

DEFAULT_WAIT_S = 10.0
MAX_WAIT_S = 50.0
"""How long ``execute`` waits for a run to finish before answering 202 (below the gateway's 60 s)."""

MAX_CORPORA_OFFERED = 8
"""Corpus names a run offers the model (the tenant's first ones by name)."""
