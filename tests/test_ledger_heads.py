"""Forks made visible: ``GET /p2pserve/ledger/heads`` and ``p2pserve audit --compare``.

Two nodes agree when every chain's newest block and every freeze match; a fork shows as two
hashes at one height, a lagging node as a lower height or a missing account. The comparison
is pure (tested on hand-built views); the route runs on a real store through ASGI; the CLI
runs end to end against small HTTP servers on 127.0.0.1 that serve real stores' heads.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
from starlette.applications import Starlette
from typer.testing import CliRunner

from p2pserve.api.ledger import ledger_routes
from p2pserve.cli import app
from p2pserve.ledger import compare, rules
from p2pserve.ledger.blocks import Block, StakeBody, UnstakeBody
from p2pserve.ledger.compare import Heads, compare_heads
from p2pserve.ledger.service import LedgerService
from p2pserve.ledger.store import LedgerStore
from p2pserve.testing.http_stub import LoopbackServer, QuietHandler
from p2pserve.testing.ledger import CREDIT, TEST_PARAMS, World


def view(source: str, heads: dict[str, tuple[int, str]], frozen: tuple[str, ...] = (), fp: str = "f0",
         network_id: str = "testnet") -> Heads:
    return Heads(source, network_id, fp, sum(h + 1 for h, _ in heads.values()), heads, frozenset(frozen))


def test_compare_heads_names_every_account_they_disagree_on() -> None:
    same = {"acct-a": (2, "aa"), "acct-b": (0, "bb")}
    assert compare_heads([view("n1", same), view("n2", dict(same))]).agree
    got = compare_heads([
        view("n1", {"a": (2, "a2"), "b": (1, "b1"), "c": (0, "c0"), "d": (3, "d3"), "e": (0, "e0")}, frozen=("d",)),
        view("n2", {"a": (2, "a2"), "b": (1, "bX"), "d": (3, "d3"), "e": (0, "e0")}),
        view("n3", {"a": (1, "a1"), "b": (1, "b1"), "c": (0, "c0"), "d": (3, "d3"), "e": (0, "e0")}, frozen=("d",)),
    ])
    assert not got.agree and got.notes == ()
    assert [(d.account, d.reason) for d in got.disagreements] == [("a", "height"), ("b", "hash"), ("c", "missing"),
                                                                   ("d", "frozen")]
    a, b, c, d = got.disagreements
    assert a.heads == {"n1": (2, "a2"), "n2": (2, "a2"), "n3": (1, "a1")}
    assert c.heads["n2"] is None and d.frozen_on == ("n1", "n3")
    data = got.to_json()
    assert data["agree"] is False and [n["source"] for n in data["nodes"]] == ["n1", "n2", "n3"]
    assert data["disagreements"][2]["heads"] == {"n1": [0, "c0"], "n2": None, "n3": [0, "c0"]}
    # an account known only from a proof (frozen, no blocks) on one node
    assert [(x.account, x.reason) for x in compare_heads([view("n1", {}, frozen=("z",)), view("n2", {})]).disagreements] \
        == [("z", "frozen")]


def test_compare_heads_notes_networks_and_unexplained_fingerprints() -> None:
    heads = {"a": (0, "a0")}
    other = compare_heads([view("n1", heads), view("n2", heads, network_id="othernet")])
    assert not other.agree and "different networks" in other.notes[0]
    odd = compare_heads([view("n1", heads, fp="f1"), view("n2", heads, fp="f2")])
    assert not odd.agree and odd.disagreements == () and "fingerprints differ" in odd.notes[0]
    with pytest.raises(ValueError, match="distinct"):
        compare_heads([view("n1", heads), view("n1", heads)])


def test_heads_json_round_trip_and_refusals() -> None:
    h = view("x", {"a": (1, "a1")}, frozen=("a",))
    assert Heads.from_json(json.loads(json.dumps(h.to_json())), "x") == h
    for bad in ([], {"network_id": "n"}, {**h.to_json(), "heads": {"a": [1]}}, {**h.to_json(), "blocks": "1"}):
        with pytest.raises(Exception, match="not a heads object"):
            Heads.from_json(bad)


# --- real stores -----------------------------------------------------------------------------


class Histories:
    """One history, and what four nodes hold of it: the same, a fork of account a, a node
    that lags on a, and one that has also seen account d open."""

    def __init__(self) -> None:
        w = World(random.Random(11))
        for n in ("a", "b", "c"):
            w.open(n, staked=CREDIT)
        for _ in range(12):
            w.random_step(["a", "b", "c"])
        base = list(w.log)
        fork_state = w.state.copy()
        ext = w.add(w.block("a", StakeBody(1)))
        alt = rules.next_block(w.signer("a"), fork_state, UnstakeBody(1), w.now_ms + 1)
        w.open("d")
        self.world = w
        self.fork_height = ext.height
        self.blocks: dict[str, list[Block]] = {
            "same": base + [ext], "twin": base + [ext], "fork": base + [alt], "lag": base, "more": list(w.log),
        }

    def store(self, name: str) -> LedgerStore:
        s = LedgerStore(":memory:", TEST_PARAMS)
        s.append_many(self.blocks[name])
        return s


@pytest.fixture(scope="module")
def histories() -> Histories:
    return Histories()


class _FakeLedger:
    """What the ledger routes read for GET requests: the store."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store


async def test_heads_route_serves_the_store_state(histories: Histories) -> None:
    store = histories.store("same")
    routes = ledger_routes(cast(LedgerService, _FakeLedger(store)), api_key="k")
    transport = httpx.ASGITransport(app=Starlette(routes=routes))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        assert (await client.get("/p2pserve/ledger/heads")).status_code == 401
        r = await client.get("/p2pserve/ledger/heads", headers={"Authorization": "Bearer k"})
    assert r.status_code == 200
    data = r.json()
    state = store.state
    assert set(data) == {"network_id", "fingerprint", "blocks", "heads", "frozen"}
    assert data["network_id"] == TEST_PARAMS.network_id and data["blocks"] == state.block_count
    assert data["fingerprint"] == rules.fingerprint(state).hex() and data["frozen"] == []
    assert data["heads"] == {acct: [h, bh.hex()] for acct, (h, bh) in state.heads().items()}
    assert Heads.from_json(data, "n") == Heads.of_state(state, "n")


class _Nodes(LoopbackServer):
    """Fake nodes' APIs on one loopback HTTP server: ``{url}/<name>`` serves that history's
    heads; any other path is a 404 (an unreadable node)."""

    def __init__(self, bodies: dict[str, bytes]) -> None:
        class Handler(QuietHandler):
            def do_GET(self) -> None:
                name, _, rest = self.path.lstrip("/").partition("/")
                body = bodies.get(name) if "/" + rest == compare.HEADS_PATH else None
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        super().__init__(Handler)


@pytest.fixture(scope="module")
def nodes(histories: Histories) -> Iterator[str]:
    bodies = {}
    for name in histories.blocks:
        with histories.store(name) as s:
            bodies[name] = json.dumps(Heads.of_state(s.state).to_json()).encode()
    server = _Nodes(bodies)
    yield server.url
    server.close()


def test_cli_compare_agreeing_nodes_exits_0(nodes: str) -> None:
    r = CliRunner().invoke(app, ["audit", "--api", f"{nodes}/same", "--compare", f"{nodes}/twin"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    fingerprints = {ln.rsplit(" ", 1)[1] for ln in lines[:2]}
    assert lines[0].startswith(f"{nodes}/same: network testnet") and len(fingerprints) == 1
    assert lines[-1] == "all 2 nodes agree"


def test_cli_compare_names_the_forked_lagging_and_missing_accounts(nodes: str, histories: Histories) -> None:
    w = histories.world
    urls = [f"{nodes}/{n}" for n in ("same", "fork", "lag", "more")]
    r = CliRunner().invoke(app, ["audit", *[a for u in urls for a in ("--compare", u)]])
    assert r.exit_code == 1, r.output
    out = r.stdout
    assert all(out.count(f"{u}: network testnet") == 1 for u in urls)
    assert f"{w.id('a')} height:" in out  # fork and lag differ on a; the lagging height wins the label
    assert f"{w.id('d')} missing:" in out
    assert not any(w.id(n) in out for n in ("b", "c"))
    assert "disagree on 2 account(s)" in r.stderr
    # two nodes on one fork: a is the only account, and the hashes at one height differ
    r = CliRunner().invoke(app, ["audit", "--compare", urls[0], "--compare", urls[1], "--json"])
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert data["agree"] is False and [n["source"] for n in data["nodes"]] == urls[:2]
    (d,) = data["disagreements"]
    assert (d["account"], d["reason"]) == (w.id("a"), "hash")
    heights = {h[0] for h in d["heads"].values()}
    assert heights == {histories.fork_height} and len({h[1] for h in d["heads"].values()}) == 2


def test_cli_compare_unreadable_or_too_few_nodes_exits_2(nodes: str, tmp_path: Any) -> None:
    r = CliRunner().invoke(app, ["audit", "--compare", f"{nodes}/same", "--compare", f"{nodes}/nobody"])
    assert r.exit_code == 2 and "nobody" in r.stderr
    r = CliRunner().invoke(app, ["audit", "--compare", f"{nodes}/same", "--compare", f"{nodes}/nobody", "--json"])
    assert r.exit_code == 2 and json.loads(r.stdout)["agree"] is False
    r = CliRunner().invoke(app, ["audit", "--compare", f"{nodes}/same"])
    assert r.exit_code == 2 and "two nodes" in r.stderr
    r = CliRunner().invoke(app, ["audit", "--db", str(tmp_path / "x.sqlite3"), "--compare", f"{nodes}/same"])
    assert r.exit_code == 2 and "--api" in r.stderr
