"""How the fault drill classifies an answer (`tests.faults.fault_load.Ledger`), without a stack."""

from __future__ import annotations

from scripts.bench.load_gen import Outcome
from tests.faults.fault_load import Ledger

CUT = "RemoteProtocolError: peer closed connection without sending complete message body (incomplete chunked read)"


def _ledger(crash: bool) -> Ledger:
    return Ledger(fault_at_s=6.0, fault_done_s=6.1, crash_cuts_streams=crash)


def test_a_body_cut_while_the_streaming_process_crashed_is_cut_not_failed() -> None:
    ledger = _ledger(crash=True)
    ledger.record(Outcome("llm_stream", 9, 4.5, 4.5, 6.2, CUT))
    assert ledger.total("cut") == 1 and ledger.failures == []
    assert ledger.recovery_s > 0  # still a bad answer for the recovery time


def test_a_cut_outside_the_crash_or_in_a_fault_that_crashes_nothing_fails() -> None:
    before = _ledger(crash=True)
    before.record(Outcome("llm_stream", 1, 1.0, 1.0, 2.0, CUT))  # over before the fault
    after = _ledger(crash=True)
    after.record(Outcome("llm_stream", 2, 7.0, 7.0, 7.5, CUT))  # started after the crash: the new replica cut it
    no_crash = _ledger(crash=False)
    no_crash.record(Outcome("llm_stream", 3, 5.9, 5.9, 6.3, CUT))
    for ledger in (before, after, no_crash):
        assert ledger.total("cut") == 0 and len(ledger.failures) == 1


def test_other_errors_across_the_crash_still_fail() -> None:
    ledger = _ledger(crash=True)
    ledger.record(Outcome("llm_stream", 4, 5.9, 5.9, 6.3, "RuntimeError: greedy output changed in a stream: 'x'"))
    ledger.record(Outcome("llm_completion", 5, 5.9, 5.9, 6.3, "RuntimeError: POST /v1/completions -> 500: {}"))
    assert ledger.total("cut") == 0 and len(ledger.failures) == 2
