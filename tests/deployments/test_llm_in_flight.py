"""The router's in-flight book, driven with the event orders Serve produces (see `deployments.llm.in_flight`)."""

from __future__ import annotations

from types import SimpleNamespace

from deployments.llm.in_flight import InFlight, Tracked


def _tracked() -> Tracked:
    return Tracked(prompt_tokens=10, hashes={"a": [b"x"], "b": [b"x"]})


def _pending() -> SimpleNamespace:
    """A stand-in for Serve's PendingRequest: the book keys on the object, never reads it."""
    return SimpleNamespace()


def test_siblings_with_one_internal_id_each_count() -> None:
    book = InFlight()
    siblings = [(_pending(), _tracked()) for _ in range(3)]
    for pending, tracked in siblings:
        book.choose(pending, "req-1", tracked, "a")
    assert book.load("a") == 3
    for (pending, _), replica in zip(siblings, ("a", "a", "b")):
        assert book.routed(pending, "req-1", replica, lambda: None) is not None
    assert (book.load("a"), book.load("b")) == (2, 1)
    book.completed("req-1", "a", confirms=True)
    assert (book.load("a"), book.load("b")) == (1, 1)
    book.completed("req-1", "b", confirms=True)
    book.completed("req-1", "a", confirms=True)
    assert (book.load("a"), book.load("b"), len(book)) == (0, 0, 0)
    book.completed("req-1", "a", confirms=True)  # one completion too many changes nothing
    assert book.load("a") == 0


def test_a_rejected_request_stops_counting_until_it_is_chosen_again() -> None:
    book = InFlight()
    pending, tracked = _pending(), _tracked()
    book.choose(pending, "r", tracked, "a")
    book.completed("r", "a", confirms=True)  # rejected by a: Serve routes it again
    assert book.load("a") == 0 and book.chosen(pending) is tracked
    book.choose(pending, "r", tracked, "b")
    assert (book.load("a"), book.load("b")) == (0, 1)
    book.routed(pending, "r", "b", lambda: None)
    book.completed("r", "b", confirms=True)
    assert book.load("b") == 0 and len(book) == 0


def test_a_completion_that_overtakes_its_confirmation_leaves_no_count() -> None:
    book = InFlight()
    pending, tracked = _pending(), _tracked()
    book.choose(pending, "r", tracked, "a")
    book.completed("r", "a", confirms=True)
    assert book.routed(pending, "r", "a", lambda: None) is tracked  # still learnt where it ran
    assert book.load("a") == 0 and len(book) == 0


def test_without_the_rejection_protocol_the_completion_confirms() -> None:
    book = InFlight()
    pending, tracked = _pending(), _tracked()
    book.choose(pending, "r", tracked, "a")
    assert book.completed("r", "a", confirms=False) is tracked
    assert tracked.routed_to == "a" and book.load("a") == 0 and len(book) == 0


def test_an_unknown_request_is_rebuilt_on_confirmation() -> None:
    book = InFlight()
    rebuilt = _tracked()
    assert book.routed(_pending(), "r", "a", lambda: rebuilt) is rebuilt
    assert book.load("a") == 1
    assert book.routed(_pending(), "s", "a", lambda: None) is None  # unreadable: not counted
    assert book.load("a") == 1


def test_unconfirmed_choices_expire_and_the_book_is_bounded() -> None:
    now = [50.0]
    book = InFlight(max_requests=3, clock=lambda: now[0])
    old, new = _pending(), _pending()
    book.choose(old, "old", _tracked(), "a")
    now[0] = 99.0
    book.choose(new, "new", _tracked(), "a")
    now[0] = 100.0
    assert book.expire(ttl_s=30.0) == 1 and book.load("a") == 1 and book.chosen(old) is None
    for i in range(5):
        pending = _pending()
        book.choose(pending, f"run{i}", _tracked(), "b")
        book.routed(pending, f"run{i}", "b", lambda: None)
    assert len(book) == 3 and book.load("b") == 2  # the oldest running ones went first


def test_an_abandoned_choice_stops_counting_at_once() -> None:
    book = InFlight()
    left, waiting = SimpleNamespace(gone=True), SimpleNamespace(gone=False)
    book.choose(left, "r1", _tracked(), "a")
    book.choose(waiting, "r2", _tracked(), "a")
    assert book.expire(ttl_s=1e9, abandoned=lambda pending: pending.gone) == 1
    assert book.load("a") == 1 and book.chosen(left) is None and book.chosen(waiting) is not None
