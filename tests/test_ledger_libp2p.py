"""The ledger over real libp2p: after offloaded traffic (paid in batched pay blocks, one
claim per pay block) every node's audit passes and all three compute the same balances
(same fingerprint) within a few seconds; a node reopened from its SQLite file has the same
state."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from p2pserve.config import parse_config
from p2pserve.ledger import audit
from p2pserve.ledger.blocks import Kind
from p2pserve.ledger.rules import fingerprint
from p2pserve.ledger.store import LedgerStore
from tests.libp2p_harness import MODEL, three_nodes, wait_ready

pytestmark = pytest.mark.libp2p

PARAMS = parse_config(None).ledger_params.network_params()


async def test_payments_converge_audit_and_survive_restart(tmp_path: Path) -> None:
    paths = [tmp_path / f"n{i}" / "ledger.sqlite3" for i in range(3)]
    stores = [LedgerStore(p, PARAMS) for p in paths]
    with trio.fail_after(60):
        async with three_nodes(stores) as (nodes, urls):
            api = urls[0]
            await wait_ready(nodes)
            async with httpx.AsyncClient(base_url=api, timeout=20) as client:
                for i in range(8):
                    r = await client.post("/v1/completions", json={"model": MODEL, "prompt": f"count {i}", "max_tokens": 10})
                    assert r.status_code == 200, r.text
            requester = nodes[0]
            await requester.ledger.flush()  # pays are queued off the request's path
            assert requester.ledger.paid == 8 and requester.ledger.queued() == 0

            # every pay is claimed and all three agree, within a few seconds
            start = trio.current_time()
            with trio.fail_after(10):
                while True:
                    prints = {fingerprint(n.ledger.store.state) for n in nodes}
                    unclaimed = sum(len(n.ledger.store.state.unclaimed_for(n.peer_id)) for n in nodes)
                    pays = sum(1 for b in nodes[0].ledger.store.blocks_after(requester.peer_id, -1, 100) if b.kind == Kind.PAY)
                    if len(prints) == 1 and unclaimed == 0 and sum(n.ledger.claimed for n in nodes) == pays:
                        break
                    await trio.sleep(0.05)
            print(f"ledgers converged {trio.current_time() - start:.2f} s after the last request")

            free = {n.peer_id: n.ledger.store.state.account(n.peer_id).free for n in nodes}  # type: ignore[union-attr]
            initial = PARAMS.initial_credit
            spent = initial - free[requester.peer_id]
            assert spent > 0
            assert sum(free[n.peer_id] - initial for n in nodes[1:]) == spent  # executors earned what node 0 paid

            # the audit of every node's API passes (run in a thread: the CLI client is synchronous)
            for url in urls:
                report = await trio.to_thread.run_sync(lambda: audit.run(api=url))
                assert report.ok, report.problems
                assert report.blocks == nodes[0].ledger.store.count()
            final = fingerprint(nodes[0].ledger.store.state)

    for s in stores:
        s.close()
    for p in paths:
        report = audit.run(db=p)
        assert report.ok, report.problems
        with LedgerStore(p, PARAMS) as reopened:
            assert fingerprint(reopened.state) == final
