"""One tool call the model made: read it, check it, and run it with a timeout and (when safe) retries.

Reading a call never raises past `InvalidCall`: an unknown tool, arguments
that are not JSON or do not fit the tool's schema become a step the model is
told about, within the run's budget. Running it bounds the call by the
tool's timeout and retries only idempotent tools, only for failures that a
retry can change (the service was unavailable or slow). ``on_attempt`` is
awaited before every attempt, so the intent of each call is stored before
the call is made.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from business_modules.agents.config import AgentsSettings
from business_modules.agents.ports import ToolFailed, ToolUnavailable
from business_modules.agents.schemas import validation_errors
from business_modules.agents.tools import FINAL_ANSWER, Tool, ToolContext, get_tool

logger = logging.getLogger(__name__)


class InvalidCall(Exception):
    """The model's call cannot be made (unknown tool, bad arguments); the message is told to the model."""


@dataclass(frozen=True, slots=True)
class CallResult:
    ok: bool
    attempts: int
    result: dict[str, Any] | None = None
    error: str | None = None


def _short_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "(arguments)"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def parse_arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise InvalidCall("the arguments are not valid JSON (cut short by max_tokens?)") from None


def read_final_answer(arguments: str, output_schema: dict[str, Any]) -> Any:
    """The final answer's arguments, validated against the capability's output schema, or `InvalidCall`."""
    answer = parse_arguments(arguments)
    errors = validation_errors(output_schema, answer)
    if errors:
        raise InvalidCall(f"the final answer does not fit the output schema: {'; '.join(errors)}")
    return answer


def read_call(name: str, arguments: str, *, offered: Sequence[str], corpora: Sequence[str]) -> tuple[Tool, BaseModel]:
    """The tool and its validated arguments, or `InvalidCall`."""
    tool = get_tool(name)
    if tool is None or name not in offered:
        raise InvalidCall(f"there is no tool {name[:64]!r}; the tools are: {', '.join([*offered, FINAL_ANSWER])}")
    raw = parse_arguments(arguments)
    try:
        return tool, tool.parse(raw, corpora)
    except ValidationError as exc:
        raise InvalidCall(f"invalid arguments for {name}: {_short_validation(exc)}") from None
    except ValueError as exc:
        raise InvalidCall(f"invalid arguments for {name}: {exc}") from None


class ToolCaller:
    """Runs tool calls under the settings' timeouts and retry policy."""

    def __init__(self, settings: AgentsSettings, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.settings = settings
        self._sleep = sleep

    def timeout_for(self, tool: Tool) -> float:
        return self.settings.document_timeout_s if tool.long_running else self.settings.tool_timeout_s

    async def call(self, tool: Tool, args: BaseModel, ctx: ToolContext, *, first_attempt: int = 1,
                   on_attempt: Callable[[int], Awaitable[None]]) -> CallResult:
        """Run the call; retried only when ``tool`` is idempotent and its service was unavailable or slow."""
        attempt = first_attempt
        tries_left = 1 + (self.settings.tool_retries if tool.idempotent else 0)
        backoff = self.settings.tool_retry_backoff_s
        while True:
            await on_attempt(attempt)
            tries_left -= 1
            try:
                async with asyncio.timeout(ctx.timeout_s):
                    result = await tool.run(args, ctx)
                return CallResult(ok=True, attempts=attempt, result=result)
            except TimeoutError:
                error = f"{tool.name} did not answer within {ctx.timeout_s:g} s"
            except ToolUnavailable as exc:
                error = f"{tool.name} is unavailable: {exc}"
            except ToolFailed as exc:
                return CallResult(ok=False, attempts=attempt, error=str(exc) or f"{tool.name} failed")
            except ValidationError as exc:
                return CallResult(ok=False, attempts=attempt, error=f"{tool.name}: {_short_validation(exc)}")
            except Exception as exc:  # noqa: BLE001 - logged with its traceback; the model is told it failed
                logger.exception("tool %s failed unexpectedly", tool.name)
                return CallResult(ok=False, attempts=attempt, error=f"{tool.name} failed: internal error "
                                                                    f"({type(exc).__name__})")
            if tries_left <= 0:
                note = "" if tool.idempotent else " (not retried: the tool has side effects)"
                return CallResult(ok=False, attempts=attempt, error=error + note)
            logger.info("%s: %s; retrying in %g s", tool.name, error, backoff)
            await self._sleep(backoff)
            backoff *= 2
            attempt += 1
