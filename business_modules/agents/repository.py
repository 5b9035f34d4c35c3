"""SQL of agent runs and their steps over the storage `Database`.

- ``agent_runs``: one per execution (owner, the agent's definition as it was,
  inputs, parameters, status, result, usage counters, lease and attempt);
- ``agent_steps``: every step of a run, keyed ``(run_id, idx)``: model calls
  (usage, the calls the model made) and tool calls (arguments, outcome).

Every write a running attempt makes is guarded by a compare-and-set on the
run's row (``status = 'running' AND attempt_id = :attempt``) in the same
transaction as the step it stores: a run that was cancelled, or adopted by
another replica after this one's lease ran out, can never get a step from
the old attempt. A tool call's intent (``running``) is stored before the call
and its outcome after, so a resumed run knows which calls may have happened.
"""

from __future__ import annotations

import json
from typing import Any

from business_modules.agents.models import Run, RunStatus, Step, StepKind, StepStatus
from business_modules.storage import Database, Migration, register_migrations

register_migrations(
    "agents",
    [
        Migration(
            1,
            "agent runs, steps and tenant agents",
            """
            CREATE TABLE IF NOT EXISTS agent_runs (
                id TEXT PRIMARY KEY,
                owner TEXT,
                agent_id TEXT NOT NULL,
                capability TEXT NOT NULL,
                agent_json TEXT NOT NULL,
                inputs_json TEXT NOT NULL,
                parameters_json TEXT NOT NULL,
                dry_run INTEGER NOT NULL,
                status TEXT NOT NULL,
                context_json TEXT,
                result_json TEXT,
                error TEXT,
                steps_used INTEGER NOT NULL DEFAULT 0,
                prompt_tokens BIGINT NOT NULL DEFAULT 0,
                completion_tokens BIGINT NOT NULL DEFAULT 0,
                cached_tokens BIGINT NOT NULL DEFAULT 0,
                runner_id TEXT,
                attempt_id TEXT,
                lease_until DOUBLE PRECISION,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                finished_at DOUBLE PRECISION
            );
            CREATE INDEX IF NOT EXISTS agent_runs_status_lease ON agent_runs (status, lease_until);
            CREATE INDEX IF NOT EXISTS agent_runs_owner_created ON agent_runs (owner, created_at);
            CREATE TABLE IF NOT EXISTS agent_steps (
                run_id TEXT NOT NULL,
                idx INTEGER NOT NULL,
                kind TEXT NOT NULL,
                status TEXT NOT NULL,
                tool_name TEXT,
                call_id TEXT,
                arguments TEXT,
                result_json TEXT,
                error TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                text TEXT,
                tool_calls_json TEXT NOT NULL DEFAULT '[]',
                prompt_tokens INTEGER NOT NULL DEFAULT 0,
                completion_tokens INTEGER NOT NULL DEFAULT 0,
                cached_tokens INTEGER NOT NULL DEFAULT 0,
                ttft_ms DOUBLE PRECISION,
                latency_ms DOUBLE PRECISION,
                finish_reason TEXT,
                started_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                finished_at DOUBLE PRECISION,
                PRIMARY KEY (run_id, idx)
            );
            CREATE TABLE IF NOT EXISTS agent_definitions (
                tenant TEXT NOT NULL,
                id TEXT NOT NULL,
                definition_json TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (tenant, id)
            );
            """,
        ),
        Migration(2, "agent runs keep their caller's scopes",
                  "ALTER TABLE agent_runs ADD COLUMN scopes_json TEXT"),
    ],
)

_RUN_COLUMNS = ("id, owner, agent_id, capability, agent_json, inputs_json, parameters_json, dry_run, status, scopes_json,"
                " context_json, result_json, error, steps_used, prompt_tokens, completion_tokens, cached_tokens,"
                " runner_id, attempt_id, lease_until, created_at, updated_at, started_at, finished_at")
_STEP_COLUMNS = ("run_id, idx, kind, status, tool_name, call_id, arguments, result_json, error, attempts, text,"
                 " tool_calls_json, prompt_tokens, completion_tokens, cached_tokens, ttft_ms, latency_ms,"
                 " finish_reason, started_at, updated_at, finished_at")
_UNFINISHED = "('queued', 'running', 'awaiting_approval')"


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _run(row: dict[str, Any]) -> Run:
    return Run(
        id=row["id"], owner=row["owner"], agent_id=row["agent_id"], capability=row["capability"],
        agent=json.loads(row["agent_json"]), inputs=json.loads(row["inputs_json"]),
        parameters=json.loads(row["parameters_json"]), dry_run=bool(row["dry_run"]),
        status=RunStatus(row["status"]), context=_loads(row["context_json"]), result=_loads(row["result_json"]),
        scopes=None if row["scopes_json"] is None else tuple(json.loads(row["scopes_json"])),
        error=row["error"], steps_used=int(row["steps_used"]), prompt_tokens=int(row["prompt_tokens"]),
        completion_tokens=int(row["completion_tokens"]), cached_tokens=int(row["cached_tokens"]),
        runner_id=row["runner_id"], attempt_id=row["attempt_id"], lease_until=row["lease_until"],
        created_at=row["created_at"], updated_at=row["updated_at"], started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def _step(row: dict[str, Any]) -> Step:
    return Step(
        run_id=row["run_id"], index=int(row["idx"]), kind=StepKind(row["kind"]), status=StepStatus(row["status"]),
        tool_name=row["tool_name"], call_id=row["call_id"], arguments=row["arguments"],
        result=_loads(row["result_json"]), error=row["error"], attempts=int(row["attempts"]), text=row["text"],
        tool_calls=json.loads(row["tool_calls_json"]), prompt_tokens=int(row["prompt_tokens"]),
        completion_tokens=int(row["completion_tokens"]), cached_tokens=int(row["cached_tokens"]),
        ttft_ms=row["ttft_ms"], latency_ms=row["latency_ms"], finish_reason=row["finish_reason"],
        started_at=row["started_at"], updated_at=row["updated_at"], finished_at=row["finished_at"],
    )


def _step_params(step: Step) -> dict[str, Any]:
    return {"run_id": step.run_id, "idx": step.index, "kind": step.kind.value, "status": step.status.value,
            "tool_name": step.tool_name, "call_id": step.call_id, "arguments": step.arguments,
            "result_json": None if step.result is None else json.dumps(step.result, ensure_ascii=False),
            "error": None if step.error is None else step.error[:2000], "attempts": step.attempts,
            "text": step.text, "tool_calls_json": json.dumps(step.tool_calls), "prompt_tokens": step.prompt_tokens,
            "completion_tokens": step.completion_tokens, "cached_tokens": step.cached_tokens,
            "ttft_ms": step.ttft_ms, "latency_ms": step.latency_ms, "finish_reason": step.finish_reason,
            "started_at": step.started_at, "updated_at": step.updated_at, "finished_at": step.finished_at}


async def insert_run(db: Database, run: Run) -> None:
    await db.execute(
        "INSERT INTO agent_runs (id, owner, agent_id, capability, agent_json, inputs_json, parameters_json, dry_run,"
        " status, scopes_json, runner_id, lease_until, created_at, updated_at)"
        " VALUES (:id, :owner, :agent_id, :capability, :agent_json, :inputs_json, :parameters_json, :dry_run,"
        " :status, :scopes_json, :runner_id, :lease_until, :now, :now)",
        {"id": run.id, "owner": run.owner, "agent_id": run.agent_id, "capability": run.capability,
         "agent_json": json.dumps(run.agent, ensure_ascii=False),
         "inputs_json": json.dumps(run.inputs, ensure_ascii=False),
         "parameters_json": json.dumps(run.parameters), "dry_run": int(run.dry_run), "status": run.status.value,
         "scopes_json": None if run.scopes is None else json.dumps(list(run.scopes)),
         "runner_id": run.runner_id, "lease_until": run.lease_until, "now": run.created_at},
    )


async def get_run(db: Database, run_id: str) -> Run | None:
    row = await db.fetch_one(f"SELECT {_RUN_COLUMNS} FROM agent_runs WHERE id = :id", {"id": run_id})
    return None if row is None else _run(row)


async def runs_of(db: Database, owner: str | None, *, limit: int, offset: int = 0) -> list[Run]:
    """The owner's runs, newest first (``owner`` None: the unowned ones)."""
    where = "owner IS NULL" if owner is None else "owner = :owner"
    rows = await db.fetch_all(
        f"SELECT {_RUN_COLUMNS} FROM agent_runs WHERE {where} ORDER BY created_at DESC, id LIMIT :limit"
        " OFFSET :offset", {"owner": owner, "limit": limit, "offset": offset})
    return [_run(row) for row in rows]


async def steps_of(db: Database, run_id: str) -> list[Step]:
    rows = await db.fetch_all(f"SELECT {_STEP_COLUMNS} FROM agent_steps WHERE run_id = :id ORDER BY idx",
                              {"id": run_id})
    return [_step(row) for row in rows]


async def _guard(db: Database, run_id: str, attempt_id: str, now: float, *, extra_sql: str = "",
                 extra: dict[str, Any] | None = None) -> bool:
    """Touch the run's row if it is still this attempt's running run (locks it until the transaction ends)."""
    return await db.execute(
        f"UPDATE agent_runs SET updated_at = :now{extra_sql} WHERE id = :id AND status = 'running'"
        " AND attempt_id = :attempt_id", {"id": run_id, "attempt_id": attempt_id, "now": now, **(extra or {})},
    ) == 1


async def _write_step(db: Database, step: Step) -> None:
    params = _step_params(step)
    changed = await db.execute(
        "UPDATE agent_steps SET kind = :kind, status = :status, tool_name = :tool_name, call_id = :call_id,"
        " arguments = :arguments, result_json = :result_json, error = :error, attempts = :attempts, text = :text,"
        " tool_calls_json = :tool_calls_json, prompt_tokens = :prompt_tokens,"
        " completion_tokens = :completion_tokens, cached_tokens = :cached_tokens, ttft_ms = :ttft_ms,"
        " latency_ms = :latency_ms, finish_reason = :finish_reason, started_at = :started_at,"
        " updated_at = :updated_at, finished_at = :finished_at WHERE run_id = :run_id AND idx = :idx", params)
    if changed == 0:
        await db.execute(
            f"INSERT INTO agent_steps ({_STEP_COLUMNS}) VALUES (:run_id, :idx, :kind, :status, :tool_name, :call_id,"
            " :arguments, :result_json, :error, :attempts, :text, :tool_calls_json, :prompt_tokens,"
            " :completion_tokens, :cached_tokens, :ttft_ms, :latency_ms, :finish_reason, :started_at, :updated_at,"
            " :finished_at)", params)


async def save_step(db: Database, step: Step, *, attempt_id: str, now: float, count_usage: bool = False) -> bool:
    """Store a step of this attempt's running run; with ``count_usage``, add a finished model call's tokens and
    one step to the run's counters in the same transaction. False (nothing written) when the run is no longer
    this attempt's."""
    extra_sql, extra = "", {}
    if count_usage:
        extra_sql = (", steps_used = steps_used + 1, prompt_tokens = prompt_tokens + :p,"
                     " completion_tokens = completion_tokens + :c, cached_tokens = cached_tokens + :k")
        extra = {"p": step.prompt_tokens, "c": step.completion_tokens, "k": step.cached_tokens}
    async with db.transaction():
        if not await _guard(db, step.run_id, attempt_id, now, extra_sql=extra_sql, extra=extra):
            return False
        await _write_step(db, step)
    return True


async def save_context(db: Database, run_id: str, context: dict[str, Any], *, attempt_id: str, now: float) -> bool:
    """Fix what the run offers the model (tools, corpora, date), once, at its first step."""
    return await _guard(db, run_id, attempt_id, now, extra_sql=", context_json = :context",
                        extra={"context": json.dumps(context, ensure_ascii=False)})


async def claim(db: Database, run_id: str, *, runner_id: str, attempt_id: str, now: float,
                lease_until: float) -> bool:
    """queued (or running: an attempt of this replica that stopped) -> running under a new attempt."""
    return await db.execute(
        "UPDATE agent_runs SET status = 'running', attempt_id = :attempt_id, lease_until = :lease_until,"
        " started_at = COALESCE(started_at, :now), updated_at = :now"
        " WHERE id = :id AND status IN ('queued', 'running') AND runner_id = :runner_id",
        {"id": run_id, "runner_id": runner_id, "attempt_id": attempt_id, "now": now, "lease_until": lease_until},
    ) == 1


async def finish(db: Database, run_id: str, *, attempt_id: str, status: RunStatus, now: float, result: Any = None,
                 error: str | None = None, step: Step | None = None) -> bool:
    """running -> completed or failed (with the step that ended it, in the same transaction)."""
    assert status in (RunStatus.COMPLETED, RunStatus.FAILED)
    async with db.transaction():
        won = await db.execute(
            "UPDATE agent_runs SET status = :status, result_json = :result, error = :error, finished_at = :now,"
            " updated_at = :now, lease_until = NULL WHERE id = :id AND status = 'running'"
            " AND attempt_id = :attempt_id",
            {"id": run_id, "attempt_id": attempt_id, "status": status.value, "now": now,
             "result": None if result is None else json.dumps(result, ensure_ascii=False),
             "error": None if error is None else error[:2000]},
        ) == 1
        if won and step is not None:
            await _write_step(db, step)
    return won


async def await_approval(db: Database, step: Step, *, attempt_id: str, now: float) -> bool:
    """running -> awaiting_approval, with the tool step that waits (no lease: nothing runs meanwhile)."""
    async with db.transaction():
        won = await db.execute(
            "UPDATE agent_runs SET status = 'awaiting_approval', lease_until = NULL, updated_at = :now"
            " WHERE id = :id AND status = 'running' AND attempt_id = :attempt_id",
            {"id": step.run_id, "attempt_id": attempt_id, "now": now}) == 1
        if won:
            await _write_step(db, step)
    return won


async def decide(db: Database, run_id: str, *, approved: bool, reason: str | None, runner_id: str, now: float,
                 lease_until: float) -> bool:
    """awaiting_approval -> queued on ``runner_id``, the waiting step approved or rejected (with the reason)."""
    async with db.transaction():
        won = await db.execute(
            "UPDATE agent_runs SET status = 'queued', runner_id = :runner_id, lease_until = :lease_until,"
            " updated_at = :now WHERE id = :id AND status = 'awaiting_approval'",
            {"id": run_id, "runner_id": runner_id, "lease_until": lease_until, "now": now}) == 1
        if won:
            status = StepStatus.APPROVED if approved else StepStatus.REJECTED
            await db.execute(
                "UPDATE agent_steps SET status = :status, error = :reason, updated_at = :now,"
                " finished_at = CASE WHEN :rejected = 1 THEN :now ELSE finished_at END"
                " WHERE run_id = :id AND status = 'awaiting_approval'",
                {"id": run_id, "status": status.value, "reason": reason, "now": now, "rejected": int(not approved)})
    return won


async def cancel(db: Database, run_id: str, *, now: float) -> bool:
    """Any unfinished state -> cancelled; a call waiting for approval is rejected with it."""
    async with db.transaction():
        won = await db.execute(
            "UPDATE agent_runs SET status = 'cancelled', error = 'cancelled by the caller', finished_at = :now,"
            f" updated_at = :now, lease_until = NULL WHERE id = :id AND status IN {_UNFINISHED}",
            {"id": run_id, "now": now}) == 1
        if won:
            await db.execute(
                "UPDATE agent_steps SET status = 'rejected', error = 'the run was cancelled', updated_at = :now,"
                " finished_at = :now WHERE run_id = :id AND status IN ('awaiting_approval', 'approved')",
                {"id": run_id, "now": now})
    return won


async def release(db: Database, run_id: str, *, attempt_id: str, now: float) -> bool:
    """Give a running run up at once (this replica is stopping): its lease ends now, so any replica resumes it."""
    return await db.execute(
        "UPDATE agent_runs SET lease_until = :now, updated_at = :now WHERE id = :id AND status = 'running'"
        " AND attempt_id = :attempt_id", {"id": run_id, "attempt_id": attempt_id, "now": now}) == 1


async def renew_leases(db: Database, *, runner_id: str, run_ids: list[str], lease_until: float) -> int:
    """Extend the leases of the runs this replica is running now (only those: a run whose task died expires)."""
    if not run_ids:
        return 0
    names = {f"r{i}": run_id for i, run_id in enumerate(run_ids)}
    return await db.execute(
        "UPDATE agent_runs SET lease_until = :lease_until WHERE runner_id = :runner_id"
        f" AND status IN ('queued', 'running') AND id IN ({', '.join(':' + n for n in names)})",
        {"runner_id": runner_id, "lease_until": lease_until, **names})


async def stale_runs(db: Database, *, now: float, limit: int) -> list[str]:
    """Unfinished runs whose lease ran out (their replica is gone), oldest first."""
    rows = await db.fetch_all(
        "SELECT id FROM agent_runs WHERE status IN ('queued', 'running') AND lease_until < :now"
        " ORDER BY created_at LIMIT :limit", {"now": now, "limit": limit})
    return [row["id"] for row in rows]


async def adopt(db: Database, run_id: str, *, runner_id: str, now: float, lease_until: float) -> bool:
    """Take over a stale run (compare-and-set on its expired lease, so one replica wins)."""
    return await db.execute(
        "UPDATE agent_runs SET status = 'queued', runner_id = :runner_id, lease_until = :lease_until,"
        " updated_at = :now WHERE id = :id AND status IN ('queued', 'running') AND lease_until < :now",
        {"id": run_id, "runner_id": runner_id, "now": now, "lease_until": lease_until}) == 1
