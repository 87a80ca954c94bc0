"""The requester side of an offer session as a table (h2's state-machine tests): every
(state, input) pair does what TRANSITIONS says, or is refused as local misuse; random input
sequences never reach an undefined transition; and the scenarios the shell relies on."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pserve.crypto import Signer, sha256
from p2pserve.errors import LocalProtocolError
from p2pserve.serving.events import Deadlines, Outcome
from p2pserve.serving.offenders import Offence
from p2pserve.serving.offer import (
    TERMINAL,
    TRANSITIONS,
    Accepted,
    Ended,
    Input,
    OfferSession,
    SendCancel,
    Settled,
    State,
    Text,
)
from p2pserve.serving.receipts import Bounds, price_for
from p2pserve.wire.infer import Accept, Chunk, Done, Failure, InferRequest, Receipt, Reject

REQUESTER, EXECUTOR = Signer(b"r" * 32), Signer(b"e" * 32)
D = Deadlines(accept_s=2, first_token_s=60, idle_s=30, cancel_s=5)
BOUNDS = Bounds.of({"max_tokens": 100}, 40, "", 4096)


def request() -> InferRequest:
    return InferRequest(b"\x01" * 16, "net", REQUESTER.peer_id, EXECUTOR.peer_id, "m", "chat", b"{}", 0, "", 1000,
                        b"").signed(REQUESTER)


def receipt(text: str, *, tokens: int = 2, partial: bool = False) -> Receipt:
    req = request()
    return Receipt(req.request_id, "net", REQUESTER.peer_id, EXECUTOR.peer_id, "m", req.request_hash(), sha256(text.encode()),
                   3, tokens, price_for(tokens, 1000), partial, 0, b"").signed(EXECUTOR)


def session() -> OfferSession:
    return OfferSession(request(), BOUNDS, D, hard_deadline=1000.0)


def feed(s: OfferSession, i: Input, now: float = 1.0) -> list[object]:
    """Apply input ``i`` through the method the shell would call."""
    rid = s.request.request_id
    if i is Input.SENT:
        return list(s.sent(now))
    if i is Input.ACCEPT:
        return list(s.receive(Accept(rid), now))
    if i is Input.REJECT:
        return list(s.receive(Reject(rid, "busy"), now))
    if i is Input.CHUNK:
        return list(s.receive(Chunk(s.chunks, "x"), now))
    if i is Input.DONE:
        return list(s.receive(Done("stop", receipt(s.text or "x")), now))
    if i is Input.FAILURE:
        return list(s.receive(Failure("backend-error", "boom", None), now))
    if i is Input.GARBAGE:
        return list(s.garbage("bad frame"))
    if i is Input.CLOSED:
        return list(s.closed())
    if i is Input.TIMEOUT:
        return list(s.timeout(s.deadline if s.deadline is not None else now))
    return list(s.cancel(now))


PATHS: dict[State, list[list[Input]]] = {
    State.IDLE: [[]],
    State.AWAIT_REPLY: [[Input.SENT]],
    State.STREAMING: [[Input.SENT, Input.ACCEPT], [Input.SENT, Input.ACCEPT, Input.CHUNK]],
    State.CANCELLING: [[Input.SENT, Input.ACCEPT, Input.CANCEL], [Input.SENT, Input.ACCEPT, Input.CHUNK, Input.CANCEL]],
    State.COMPLETED: [[Input.SENT, Input.ACCEPT, Input.CHUNK, Input.DONE]],
    State.REFUSED: [[Input.SENT, Input.REJECT]],
    State.FAILED: [[Input.SENT, Input.ACCEPT, Input.CHUNK, Input.FAILURE]],
    State.CANCELLED: [[Input.CANCEL]],
}


def reach(path: list[Input]) -> OfferSession:
    s = session()
    for i in path:
        feed(s, i)
    return s


def test_every_state_is_reachable_and_paths_are_right() -> None:
    for state, paths in PATHS.items():
        for path in paths:
            assert reach(path).state is state, (state, path)


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("inp", list(Input))
def test_every_state_input_pair(state: State, inp: Input) -> None:
    for path in PATHS[state]:
        s = reach(path)
        entry = TRANSITIONS.get((state, inp))
        # inputs the shell maps before the table: a timeout needs a deadline
        if entry is None or (inp is Input.TIMEOUT and s.deadline is None):
            with pytest.raises(LocalProtocolError):
                feed(s, inp)
            assert s.state is state
            continue
        events = feed(s, inp)
        target, offence = entry
        expected = target if isinstance(target, State) else (State.FAILED if s.delivered else State.REFUSED)
        if inp is Input.DONE and state is State.STREAMING and not path.count(Input.CHUNK):
            expected = State.COMPLETED  # a Done with no text is still an answer
        assert s.state is expected, (state, inp, path)
        if expected in TERMINAL and state not in TERMINAL:
            ended = [e for e in events if isinstance(e, Ended)]
            assert len(ended) == 1 and events[-1] is ended[0]
            assert ended[0].outcome.value == expected.value
            if offence is not None:
                assert ended[0].offence is offence
        else:
            assert not any(isinstance(e, Ended) for e in events)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list(Input)), max_size=12))
def test_random_input_sequences_never_reach_an_undefined_transition(inputs: list[Input]) -> None:
    s = session()
    ended = 0
    for i in inputs:
        before = s.state
        if (before, i) not in TRANSITIONS or (i is Input.TIMEOUT and s.deadline is None):
            with pytest.raises(LocalProtocolError):
                feed(s, i)
            assert s.state is before
            continue
        ended += sum(isinstance(e, Ended) for e in feed(s, i))
        assert (s.state in TERMINAL) == (s.outcome is not None)
    assert ended <= 1  # one Ended at most, ever


def test_an_answer_streams_in_order_and_its_receipt_is_checked() -> None:
    s = session()
    s.sent(0)
    assert s.deadline == D.accept_s
    assert s.receive(Accept(s.request.request_id), 1) == [Accepted()]
    assert s.deadline == 1 + D.first_token_s
    assert s.receive(Chunk(0, "Hello"), 2) == [Text("Hello")]
    assert s.deadline == 2 + D.idle_s
    assert s.receive(Chunk(1, " world"), 3) == [Text(" world")]
    good = receipt("Hello world")
    settled, ended = s.receive(Done("stop", good), 4)
    assert settled == Settled(good, False) and isinstance(ended, Ended)
    assert ended.outcome is Outcome.COMPLETED and ended.reusable and not ended.exclude and ended.offence is None


@pytest.mark.parametrize("tamper", [
    lambda r: dataclasses.replace(r, completion_tokens=990_000, price=price_for(990_000, 1000)).signed(EXECUTOR),
    lambda r: dataclasses.replace(r, response_hash=sha256(b"other")).signed(EXECUTOR),
    lambda r: dataclasses.replace(r, price=r.price + 1),  # signature no longer verifies
])
def test_a_bad_receipt_is_not_paid_and_is_an_offence(tamper: Callable[[Receipt], Receipt]) -> None:
    s = reach([Input.SENT, Input.ACCEPT])
    s.receive(Chunk(0, "Hello world"), 2)
    settled, ended = s.receive(Done("stop", tamper(receipt("Hello world"))), 3)
    assert isinstance(settled, Settled) and settled.receipt is None and settled.problem
    assert isinstance(ended, Ended) and ended.outcome is Outcome.COMPLETED and ended.offence is Offence.BAD_RECEIPT


def test_out_of_order_chunk_and_accept_for_another_request_are_protocol_errors() -> None:
    s = reach([Input.SENT, Input.ACCEPT])
    (ended,) = s.receive(Chunk(1, "skip"), 2)
    assert isinstance(ended, Ended) and ended.offence is Offence.PROTOCOL and ended.outcome is Outcome.REFUSED
    s = reach([Input.SENT])
    (ended,) = s.receive(Accept(b"\x02" * 16), 1)
    assert isinstance(ended, Ended) and ended.offence is Offence.PROTOCOL and not ended.reusable


def test_rejects_keep_the_session_and_only_hard_rejects_exclude() -> None:
    for reason, exclude in (("busy", False), ("no-continuation", False), ("price", True), ("no-credit", True)):
        s = reach([Input.SENT])
        (ended,) = s.receive(Reject(s.request.request_id, reason), 1)
        assert isinstance(ended, Ended) and ended.reusable and ended.exclude is exclude and ended.offence is None


def test_stall_after_text_is_a_failure_and_before_text_a_refusal() -> None:
    s = reach([Input.SENT, Input.ACCEPT])
    (ended,) = s.timeout(s.deadline or 0)
    assert isinstance(ended, Ended) and ended.outcome is Outcome.REFUSED and ended.offence is Offence.STALL
    s = reach([Input.SENT, Input.ACCEPT, Input.CHUNK])
    (ended,) = s.closed("reset")
    assert isinstance(ended, Ended) and ended.outcome is Outcome.FAILED and ended.offence is Offence.BROKEN
    s = reach([Input.SENT])
    (ended,) = s.timeout(s.deadline or 0)
    assert isinstance(ended, Ended) and ended.offence is Offence.NO_REPLY


def test_the_hard_deadline_caps_every_step() -> None:
    s = OfferSession(request(), BOUNDS, D, hard_deadline=10.0)
    s.sent(9.5)
    assert s.deadline == 10.0
    with pytest.raises(LocalProtocolError):
        s.timeout(9.9)  # not due yet


def test_cancel_mid_answer_reads_the_rest_and_pays_the_partial_receipt() -> None:
    s = reach([Input.SENT, Input.ACCEPT])
    s.receive(Chunk(0, "a"), 1)
    assert s.cancel(2) == [SendCancel()] and s.state is State.CANCELLING and s.deadline == 2 + D.cancel_s
    assert s.receive(Chunk(1, "b"), 2.5) == []  # in flight: read, not delivered
    assert s.delivered == ["a"] and s.text == "ab"
    partial = receipt("ab", partial=True)
    settled, ended = s.receive(Failure("cancelled", "the requester cancelled", partial), 3)
    assert settled == Settled(partial, True)
    assert isinstance(ended, Ended) and ended.outcome is Outcome.CANCELLED and ended.reusable and not ended.exclude


def test_cancel_before_accept_ends_at_once_and_a_silent_executor_after_cancel_loses_the_stream() -> None:
    s = reach([Input.SENT])
    (ended,) = s.cancel(1)
    assert isinstance(ended, Ended) and ended.outcome is Outcome.CANCELLED and not ended.reusable
    s = reach([Input.SENT, Input.ACCEPT, Input.CANCEL])
    (ended,) = s.timeout(s.deadline or 0)
    assert isinstance(ended, Ended) and ended.outcome is Outcome.CANCELLED and not ended.reusable and ended.offence is None
