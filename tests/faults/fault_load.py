"""The request mix a fault test sends through the gateway, and how each answer is classified.

Every request ends as one of:

- **ok**: the right answer (a completion's text equal to the model's greedy
  output without any cache, a stored document with its id, an accepted job);
- **refused**: a clean refusal a client can act on, 503 with ``Retry-After``
  (or, once a stream's 200 is sent, an error event whose code says retry);
- **cut**: only where the fault crashes the process that streams the answer
  (the gateway replica: nothing of ours is left on the path to send an error
  event), a connection closed mid-body for a request in flight at that
  instant; a client sees a broken read and retries, as it would for any
  crashed server;
- **failed**: anything else (a 500, a wrong answer, a reset connection, a
  timeout, a cut outside that instant): a fault test requires none.

Acknowledged writes (document ids; export, BUL and Gamma job ids; agent run
ids) are collected so the test can check that every one still exists after
the fault. The jobs run on in the background after their 202 (BUL's and
Gamma's write with the LLM, the agent's run thinks with it): a fault may fail
one, but none may vanish.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx

from scripts.bench.load_gen import Kind, Outcome

PROMPTS = tuple(f"Fault drill {i}: the warehouse in region {i} reports that order batch {i * 37} is late; "
                "summarise what the account manager should tell the customer." for i in range(6))
"""Completion prompts, cycled: each repeats, so later ones hit the KV cache (when it is up)."""
MAX_TOKENS = 8
RETRY_CODES = {"overloaded", "backend_unavailable", "service_unavailable"}
"""Error codes of a streamed error event that mean "retry", like a 503 before the stream."""


_CUT_ERRORS = frozenset({"RemoteProtocolError", "ReadError"})
"""How httpx reports a connection closed in the middle of a response body."""


class Refused(Exception):
    """A clean refusal (503 + Retry-After): counted apart from failures."""


@dataclass
class Ledger:
    """Outcomes by kind and class, and the writes the services acknowledged."""

    fault_at_s: float | None = None
    fault_done_s: float | None = None
    crash_cuts_streams: bool = False
    """The fault crashes the process holding the answers' streams: a body cut across it is 'cut', not failed."""
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    last_bad_s: float | None = None
    documents: list[str] = field(default_factory=list)
    export_jobs: list[str] = field(default_factory=list)
    bul_tasks: list[str] = field(default_factory=list)
    gamma_generations: list[str] = field(default_factory=list)
    agent_runs: list[str] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return (len(self.documents) + len(self.export_jobs) + len(self.bul_tasks) + len(self.gamma_generations)
                + len(self.agent_runs))

    def record(self, outcome: Outcome) -> None:
        verdict = "ok" if outcome.error is None else "refused" if outcome.error.startswith("Refused") else "failed"
        if verdict == "failed" and self._cut_by_the_crash(outcome):
            verdict = "cut"
        self.counts[(outcome.kind, verdict)] += 1
        if verdict != "ok":
            self.last_bad_s = max(self.last_bad_s or 0.0, outcome.done_s)
        if verdict == "failed":
            self.failures.append(f"{outcome.kind} #{outcome.seq} at {outcome.started_s:.1f} s: {outcome.error}")

    def _cut_by_the_crash(self, outcome: Outcome) -> bool:
        """A body cut short for a request that was in flight while the fault crashed its stream's process."""
        if not self.crash_cuts_streams or self.fault_at_s is None or not outcome.error:
            return False
        crash_over = self.fault_done_s if self.fault_done_s is not None else outcome.done_s
        in_flight = outcome.started_s <= crash_over and outcome.done_s >= self.fault_at_s
        return in_flight and outcome.error.split(":", 1)[0] in _CUT_ERRORS

    def total(self, verdict: str | None = None) -> int:
        return sum(n for (_, v), n in self.counts.items() if verdict is None or v == verdict)

    @property
    def recovery_s(self) -> float:
        """From the fault to the end of the last request that was not ok (0: none was refused or failed)."""
        if self.last_bad_s is None or self.fault_at_s is None:
            return 0.0
        return max(0.0, self.last_bad_s - self.fault_at_s)


def check(response: httpx.Response, status: int) -> httpx.Response:
    """`response` if it has `status`; `Refused` for a 503 with Retry-After; an error otherwise."""
    if response.status_code == status:
        return response
    if response.status_code == 503 and response.headers.get("retry-after"):
        raise Refused(f"{response.request.url.path}: 503 {response.text[:200]}")
    raise RuntimeError(f"{response.request.method} {response.request.url.path} -> {response.status_code}: "
                       f"{response.text[:300]}")


def fault_mix(model: str, expected: dict[str, str], ledger: Ledger, corpus: str) -> list[Kind]:
    """Completions (whole and streamed, checked against `expected`), analyses, stored documents, and jobs of
    export, BUL, Gamma and the agents."""

    def body(seq: int, stream: bool) -> dict:
        return {"model": model, "prompt": PROMPTS[seq % len(PROMPTS)], "max_tokens": MAX_TOKENS, "temperature": 0,
                "stream": stream}

    async def completion(client: httpx.AsyncClient, seq: int) -> None:
        answer = check(await client.post("/v1/completions", json=body(seq, False)), 200).json()
        text = answer["choices"][0]["text"]
        if text != expected[PROMPTS[seq % len(PROMPTS)]]:
            raise RuntimeError(f"greedy output changed: {text!r} != {expected[PROMPTS[seq % len(PROMPTS)]]!r}")

    async def streamed(client: httpx.AsyncClient, seq: int) -> None:
        pieces: list[str] = []
        async with client.stream("POST", "/v1/completions", json=body(seq, True)) as response:
            if response.status_code != 200:
                await response.aread()
                check(response, 200)
            events = [line.removeprefix("data: ") async for line in response.aiter_lines() if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            raise RuntimeError(f"stream cut short: {events[-2:]}")
        for event in map(json.loads, events[:-1]):
            if "error" in event:
                code = event["error"].get("code")
                raise (Refused if code in RETRY_CODES else RuntimeError)(f"error event: {event['error']}")
            pieces += [choice["text"] for choice in event["choices"]]
        if "".join(pieces) != expected[PROMPTS[seq % len(PROMPTS)]]:
            raise RuntimeError(f"greedy output changed in a stream: {''.join(pieces)!r}")

    async def analyze(client: httpx.AsyncClient, seq: int) -> None:
        text = f"Batch {seq} is late. The late batch {seq} left the north depot late. " * 3
        answer = check(await client.post("/api/v1/redundancy/analyze", json={"content": text}), 200).json()
        if not 0 <= answer["redundancy_score"] <= 1:
            raise RuntimeError(f"implausible analysis: {answer}")

    async def store_document(client: httpx.AsyncClient, seq: int) -> None:
        documents = {"documents": [{"text": f"Incident note {seq}: batch {seq} delayed by the drill.",
                                    "name": f"note-{seq}-{uuid.uuid4().hex[:8]}"}]}
        stored = check(await client.post(f"/api/v1/redundancy/corpora/{corpus}/documents", json=documents), 201)
        ledger.documents += [d["id"] for d in stored.json()["documents"]]

    async def export_job(client: httpx.AsyncClient, seq: int) -> None:
        job = {"content": {"title": f"Drill report {seq}", "sections": [{"heading": "Delay",
                                                                         "content": f"Batch {seq} was late."}]},
               "format": "markdown"}
        accepted = check(await client.post("/api/v1/export", json=job), 202).json()
        ledger.export_jobs.append(accepted["task_id"])

    async def bul_task(client: httpx.AsyncClient, seq: int) -> None:
        body = {"query": f"Meeting minutes of the drill on late batch {seq}", "priority": 2}
        accepted = check(await client.post("/api/v1/bul/query", json=body), 202).json()
        ledger.bul_tasks.append(accepted["task_id"])

    async def gamma_generation(client: httpx.AsyncClient, seq: int) -> None:
        body = {"inputText": f"Drill update: batch {seq} was late; 3 regions affected.", "format": "social",
                "numCards": 1}
        accepted = check(await client.post("/api/v1/gamma/generations", json=body), 202).json()
        ledger.gamma_generations.append(accepted["generationId"])

    async def agent_run(client: httpx.AsyncClient, seq: int) -> None:
        body = {"inputs": {"market": f"bakeries of region {seq}", "region": "Lyon"},
                "parameters": {"max_steps": 2, "wait_s": 0, "seed": seq}}
        accepted = check(await client.post("/api/v1/agents/agents/marketing_001/capabilities/market_analysis/execute",
                                           json=body), 202).json()
        ledger.agent_runs.append(accepted["run_id"])

    return [Kind("llm_completion", 2, completion), Kind("llm_stream", 2, streamed), Kind("analyze", 2, analyze),
            Kind("store_document", 1, store_document), Kind("export_job", 1, export_job),
            Kind("bul_task", 1, bul_task), Kind("gamma_generation", 1, gamma_generation),
            Kind("agent_run", 1, agent_run)]
