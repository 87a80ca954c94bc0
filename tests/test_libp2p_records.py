"""The signed-peer-record workarounds for py-libp2p 0.8.1 (transports.libp2p._setup): a host
builds its own record's bytes once per second, not per pubsub RPC; a peer's record is
verified again only when its bytes change, it failed, or the refresh period passed."""

from __future__ import annotations

from typing import Any

import libp2p.pubsub.gossipsub
import libp2p.pubsub.pubsub
import trio
import trio.testing

from transports.libp2p._setup import (
    ENVELOPE_TTL_S,
    RECORD_MEMO,
    RECORD_REFRESH_S,
    _configure_process,
    _remembered_records,
    _reused_envelope,
)


class _Host:
    """Stands for a BasicHost: hashable, weakly referenceable."""


class _RPC:
    def __init__(self, record: bytes | None) -> None:
        self.senderRecord = record or b""  # noqa: N815 (the protobuf's name)
        self._has = record is not None

    def HasField(self, name: str) -> bool:  # noqa: N802
        assert name == "senderRecord"
        return self._has


async def test_own_record_is_rebuilt_once_per_ttl(autojump_clock: trio.testing.MockClock) -> None:
    built: list[Any] = []

    def original(host: Any) -> tuple[bytes, bool]:
        built.append(host)
        return b"record-%d" % len(built), True

    env = _reused_envelope(original)
    a, b = _Host(), _Host()
    assert env(a) == (b"record-1", True)
    assert env(a) == (b"record-1", False)  # reused: not newly created
    assert env(b) == (b"record-2", True)  # per host
    await trio.sleep(ENVELOPE_TTL_S)
    assert env(a) == (b"record-3", True)
    assert built == [a, b, a]


async def test_a_peer_record_is_verified_again_only_when_it_must_be(autojump_clock: trio.testing.MockClock) -> None:
    checked: list[tuple[bytes, str]] = []
    valid = {b"good", b"good-2"}

    def original(msg: _RPC, host: Any, peer: str) -> bool:
        checked.append((msg.senderRecord, peer))
        return msg.senderRecord in valid

    consume = _remembered_records(original)
    host = _Host()
    assert consume(_RPC(None), host, "p") and checked == []  # no record: nothing to check
    assert consume(_RPC(b"good"), host, "p") and consume(_RPC(b"good"), host, "p")
    assert checked == [(b"good", "p")]
    assert consume(_RPC(b"good"), host, "q")  # another peer sending the same bytes: checked
    assert consume(_RPC(b"good-2"), host, "p")  # new bytes: checked
    assert not consume(_RPC(b"forged"), host, "p") and not consume(_RPC(b"forged"), host, "p")  # never remembered
    assert consume(_RPC(b"good-2"), host, "p")  # the failure forgot the last good one
    assert consume(_RPC(b"good-2"), host, "p")
    await trio.sleep(RECORD_REFRESH_S)
    assert consume(_RPC(b"good-2"), host, "p")  # the refresh period passed
    assert checked == [(b"good", "p"), (b"good", "q"), (b"good-2", "p"), (b"forged", "p"), (b"forged", "p"),
                       (b"good-2", "p"), (b"good-2", "p")]
    assert consume(_RPC(b"good"), _Host(), "p")  # per host
    assert len(checked) == 8


async def test_the_memo_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    checked: list[str] = []

    def original(msg: _RPC, host: Any, peer: str) -> bool:
        checked.append(peer)
        return True

    consume = _remembered_records(original)
    host = _Host()
    for i in range(RECORD_MEMO + 1):
        consume(_RPC(b"r"), host, f"p{i}")
    consume(_RPC(b"r"), host, "p0")  # forgotten when the memo filled up
    assert len(checked) == RECORD_MEMO + 2


def test_the_patches_are_installed_where_pubsub_looks_them_up() -> None:
    _configure_process()
    for module in (libp2p.pubsub.pubsub, libp2p.pubsub.gossipsub):
        assert hasattr(module.env_to_send_in_RPC, "__wrapped__")
        assert hasattr(module.maybe_consume_signed_record, "__wrapped__")
