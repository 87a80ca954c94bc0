"""Comparing nodes' ledgers (``p2pserve audit --compare``): each node's :class:`Heads` (``GET
{api}/p2pserve/ledger/heads``: network, fingerprint, newest block of every chain, frozen
accounts) and :func:`compare_heads`, which names every account on which nodes disagree. A
fork shows as two hashes at one height; a lagging node as a lower height or a missing
account. Pure but for :func:`load_heads` (HTTP, httpx imported lazily).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from p2pserve.errors import MalformedMessage, StoreError
from p2pserve.ledger.state import LedgerState, fingerprint

__all__ = ["HEADS_PATH", "Comparison", "Disagreement", "Heads", "compare_heads", "load_heads"]

HEADS_PATH = "/p2pserve/ledger/heads"



@dataclass(frozen=True, slots=True)
class Heads:
    """One node's view of the ledger, as ``GET /p2pserve/ledger/heads`` serves it."""

    source: str
    network_id: str
    fingerprint: str
    """Hex of :func:`~p2pserve.ledger.state.fingerprint` of the node's state."""
    blocks: int
    heads: Mapping[str, tuple[int, str]]
    """``account -> (height, hex hash)`` of each chain's newest block."""
    frozen: frozenset[str]

    @classmethod
    def of_state(cls, state: LedgerState, source: str = "") -> Heads:
        """The heads of ``state`` (what the node's route serves)."""
        heads = {acct: (height, h.hex()) for acct, (height, h) in state.heads().items()}
        return cls(source, state.params.network_id, fingerprint(state).hex(), state.block_count,
                   heads, frozenset(state.frozen()))

    def to_json(self) -> dict[str, Any]:
        """The route's JSON body (``source`` is not part of it)."""
        return {
            "network_id": self.network_id,
            "fingerprint": self.fingerprint,
            "blocks": self.blocks,
            "heads": {acct: [height, h] for acct, (height, h) in sorted(self.heads.items())},
            "frozen": sorted(self.frozen),
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "") -> Heads:
        """Parse the route's JSON body. Raises MalformedMessage naming what is wrong."""
        try:
            if not isinstance(data, dict):
                raise TypeError("not an object")
            network_id, fp, blocks = data["network_id"], data["fingerprint"], data["blocks"]
            if not isinstance(network_id, str) or not isinstance(fp, str) or type(blocks) is not int:
                raise TypeError("network_id, fingerprint or blocks has the wrong type")
            heads: dict[str, tuple[int, str]] = {}
            for acct, head in dict(data["heads"]).items():
                height, h = head
                if not isinstance(acct, str) or type(height) is not int or not isinstance(h, str):
                    raise TypeError(f"bad head for {acct!r}")
                heads[acct] = (height, h)
            frozen = frozenset(data["frozen"])
            if not all(isinstance(a, str) for a in frozen):
                raise TypeError("frozen must list account names")
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessage(f"not a heads object: {exc!r}") from exc
        return cls(source, network_id, fp, blocks, heads, frozen)


DISAGREEMENTS: dict[str, str] = {
    "missing": "some nodes do not know the account",
    "height": "the nodes' newest blocks are at different heights (a node lags, or a chain forked)",
    "hash": "different blocks at the same height: a fork",
    "frozen": "frozen on some nodes only (an equivocation proof has not reached all)",
}
"""Why nodes disagree on an account, most telling first (one reason per account)."""


@dataclass(frozen=True, slots=True)
class Disagreement:
    """One account on which nodes differ: each node's head (None: unknown there)."""

    account: str
    reason: str
    heads: dict[str, tuple[int, str] | None]
    """``source -> (height, hex hash)`` or None, one entry per node in comparison order."""
    frozen_on: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "reason": self.reason,
            "heads": {src: None if h is None else [h[0], h[1]] for src, h in self.heads.items()},
            "frozen_on": list(self.frozen_on),
        }


@dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of :func:`compare_heads`."""

    nodes: tuple[Heads, ...]
    disagreements: tuple[Disagreement, ...]
    notes: tuple[str, ...]
    """Disagreements that are not about one account (network, fingerprint)."""

    @property
    def agree(self) -> bool:
        return not self.disagreements and not self.notes

    def to_json(self) -> dict[str, Any]:
        return {
            "agree": self.agree,
            "nodes": [
                {"source": n.source, "network_id": n.network_id, "fingerprint": n.fingerprint, "blocks": n.blocks,
                 "accounts": len(n.heads), "frozen": sorted(n.frozen)}
                for n in self.nodes
            ],
            "disagreements": [d.to_json() for d in self.disagreements],
            "notes": list(self.notes),
        }


def compare_heads(nodes: Sequence[Heads]) -> Comparison:
    """Name every account on which ``nodes`` disagree (pure). Sources must be distinct.

    An account disagrees when some node lacks it (``missing``), when the heights of its
    newest block differ (``height``), when the hashes at one height differ (``hash``), or
    when only some nodes have frozen it (``frozen``). Nodes on different networks, or with
    different fingerprints despite equal heads and freezes, are reported in ``notes``.
    """
    sources = [n.source for n in nodes]
    if len(set(sources)) != len(sources):
        raise ValueError("compare_heads needs distinct sources")
    accounts: set[str] = set()
    for n in nodes:  # a proof can freeze an account whose blocks a node never saw
        accounts.update(n.heads, n.frozen)
    disagreements: list[Disagreement] = []
    for acct in sorted(accounts):
        heads = {n.source: n.heads.get(acct) for n in nodes}
        frozen_on = tuple(n.source for n in nodes if acct in n.frozen)
        present = [h for h in heads.values() if h is not None]
        if 0 < len(present) < len(nodes):
            reason = "missing"
        elif len({h[0] for h in present}) > 1:
            reason = "height"
        elif len({h[1] for h in present}) > 1:
            reason = "hash"
        elif 0 < len(frozen_on) < len(nodes):
            reason = "frozen"
        else:
            continue
        disagreements.append(Disagreement(acct, reason, heads, frozen_on))
    notes: list[str] = []
    networks = sorted({n.network_id for n in nodes})
    if len(networks) > 1:
        notes.append(f"the nodes are on different networks: {', '.join(networks)}")
    elif not disagreements and len({n.fingerprint for n in nodes}) > 1:
        notes.append("fingerprints differ although every head and freeze agrees (different rules or params?)")
    return Comparison(tuple(nodes), tuple(disagreements), tuple(notes))


def load_heads(url: str, api_key: str | None = None, timeout: float = 30.0) -> Heads:
    """Fetch a node's heads (``source`` is ``url``). Raises StoreError on any failure."""
    from p2pserve.ledger.audit import api_get  # I/O, kept out of this pure module's imports

    content = api_get(url, HEADS_PATH, "application/json", api_key, timeout)
    try:
        return Heads.from_json(json.loads(content), url)
    except ValueError as exc:
        raise StoreError(f"{url.rstrip('/')}{HEADS_PATH}: not JSON: {exc}") from exc