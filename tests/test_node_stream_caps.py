"""A node's ``limits:`` stream caps (max_streams_per_peer, max_streams, max_buffered_per_peer,
max_buffered) reach its transport's :class:`~p2pserve.net.guard.StreamGuard`: the mapping, the
defaults agreeing with :mod:`p2pserve.net.caps`, and a real libp2p node started as
``p2pserve join`` starts it (127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from p2pserve.config import parse_config
from p2pserve.crypto import Signer, sha256
from p2pserve.net.caps import DEFAULT_STREAM_CAPS, StreamCaps
from p2pserve.net.framed import RECEIVE_CHUNK
from p2pserve.node import run_libp2p_node, stream_caps
from p2pserve.wire.framing import MAX_VARINT_LEN
from p2pserve.wire.limits import DEFAULT_LIMITS, READ_SLACK
from transports.libp2p import Libp2pTransport

MIB = 1 << 20
TIGHT = {"max_streams_per_peer": 16, "max_streams": 64, "max_buffered_per_peer": 8 * MIB, "max_buffered": 32 * MIB}


def test_default_limits_are_the_default_stream_caps() -> None:
    """Two homes for one set of numbers (the wire layer may not import net/): they agree."""
    assert stream_caps(DEFAULT_LIMITS) == DEFAULT_STREAM_CAPS


def test_tightened_limits_map_onto_the_caps() -> None:
    caps = stream_caps(parse_config({"limits": TIGHT}).limits)
    assert caps == StreamCaps(max_streams_per_peer=16, max_streams=64, max_buffered_per_peer=8 * MIB, max_buffered=32 * MIB)
    assert caps.cutoff_s == DEFAULT_STREAM_CAPS.cutoff_s


def test_read_slack_covers_what_a_frame_reader_holds_beyond_a_frame() -> None:
    """The config's floor on max_buffered_per_peer (max_frame + READ_SLACK) lets one stream
    receive a largest frame: its prefix and the rest of one read ride along."""
    assert READ_SLACK >= RECEIVE_CHUNK + MAX_VARINT_LEN


@pytest.mark.libp2p
async def test_a_libp2p_node_runs_with_its_configured_caps(tmp_path: Path) -> None:
    config = parse_config({
        "server_params": {"listen": ["/ip4/127.0.0.1/tcp/0"], "api": "127.0.0.1:0"},
        "models": [], "data_dir": str(tmp_path), "limits": TIGHT,
    })
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            node, _url = await nursery.start(run_libp2p_node, config, Signer(sha256(b"stream-caps")))
            assert isinstance(node.transport, Libp2pTransport)
            assert node.transport.guard.caps == stream_caps(config.limits)
            assert node.transport.guard.caps.max_buffered_per_peer == 8 * MIB
            nursery.cancel_scope.cancel()
