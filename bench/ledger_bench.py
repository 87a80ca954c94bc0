"""Ledger benchmark: SQLite append rate and audit verification rate on N valid blocks.

Generates a valid history (several accounts; pay/claim pairs, each pay settling 1 to
``--receipts`` signed receipts of one executor as a node's pay writer batches them, plus
stakes and unstakes), appends it to a fresh SQLite store (durable single-block commits
for a prefix, then batched commits for the rest), and audits the file from raw bytes on one
core (every block re-decoded, re-hashed, signature and receipt signatures verified, full
replay). Prints the rates; ``--json`` for machine output.

    python bench/ledger_bench.py [--blocks 100000] [--accounts 16] [--receipts 8] [--single 2000] [--batch 512]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from p2pserve.crypto import Signer
from p2pserve.ledger import audit as audit_mod
from p2pserve.ledger.blocks import (
    ZERO_HASH,
    Block,
    Body,
    ClaimBody,
    Kind,
    NetworkParams,
    OpenBody,
    PayBody,
    StakeBody,
    UnstakeBody,
    make_block,
)
from p2pserve.ledger.store import LedgerStore
from p2pserve.wire.infer import Receipt

PARAMS = NetworkParams("bench", 1_000 * 1_000_000, 1_000 * 1_000_000, 60_000, 1_000_000)


def history(n_blocks: int, n_accounts: int, rng: random.Random, max_receipts: int = 1) -> Iterator[Block]:
    """A valid history of ``n_blocks`` blocks, in an order the rules accept; each pay
    settles 1..``max_receipts`` receipts (uniform)."""
    signers = [Signer(rng.randbytes(32)) for _ in range(n_accounts)]
    heads: dict[str, tuple[int, bytes]] = {}
    free = {s.peer_id: 0 for s in signers}
    staked = {s.peer_id: 0 for s in signers}
    now = 1_700_000_000_000
    count = 0

    def block(s: Signer, body: Body) -> Block:
        nonlocal count, now
        now += 1
        h, prev = heads.get(s.peer_id, (-1, ZERO_HASH))
        b = make_block(s, network_id=PARAMS.network_id, height=h + 1, prev=prev, body=body, timestamp_ms=now)
        heads[s.peer_id] = (h + 1, b.digest())
        count += 1
        return b

    for s in signers:
        yield block(s, OpenBody(10_000_000))
        free[s.peer_id] = PARAMS.initial_credit - 10_000_000
        staked[s.peer_id] = 10_000_000
    while count < n_blocks:
        r = rng.random()
        a = rng.choice(signers)
        if r < 0.1 and free[a.peer_id] > 1_000_000:
            free[a.peer_id] -= 1_000_000
            staked[a.peer_id] += 1_000_000
            yield block(a, StakeBody(1_000_000))
            continue
        if r < 0.15 and staked[a.peer_id] >= 500_000:
            staked[a.peer_id] -= 500_000
            yield block(a, UnstakeBody(500_000))
            continue
        e = rng.choice([s for s in signers if s is not a])
        prices = [rng.randrange(100, 5_000) for _ in range(rng.randint(1, max_receipts))]
        price = sum(prices)
        if free[a.peer_id] < price:
            continue
        receipts = tuple(
            Receipt(
                rng.randbytes(16), PARAMS.network_id, a.peer_id, e.peer_id, "bench-model",
                rng.randbytes(32), rng.randbytes(32), 100, p // 10, p, False, now, b"",
            ).signed(e)
            for p in prices
        )
        pay = block(a, PayBody(receipts))
        free[a.peer_id] -= price
        yield pay
        if count < n_blocks:
            yield block(e, ClaimBody(a.peer_id, pay.height, pay.digest(), price))
            free[e.peer_id] += price


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=100_000)
    ap.add_argument("--accounts", type=int, default=16)
    ap.add_argument("--receipts", type=int, default=8, help="most receipts per pay block (1..N, uniform)")
    ap.add_argument("--single", type=int, default=2_000, help="blocks appended with one durable commit each")
    ap.add_argument("--batch", type=int, default=512, help="blocks per commit for the rest")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=None, help="where to put the SQLite file (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    blocks = list(history(args.blocks, args.accounts, random.Random(args.seed), args.receipts))
    gen_s = time.perf_counter() - t0
    kinds: dict[int, int] = {}
    receipts = 0
    for b in blocks:
        kinds[b.kind] = kinds.get(b.kind, 0) + 1
        if b.kind == Kind.PAY:
            body = b.decoded_body()
            assert isinstance(body, PayBody)
            receipts += len(body.receipts)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "ledger.sqlite3"
        store = LedgerStore(path, PARAMS)
        single = blocks[: args.single]
        t0 = time.perf_counter()
        for b in single:
            store.append(b)
        single_s = time.perf_counter() - t0
        rest = blocks[args.single :]
        t0 = time.perf_counter()
        for i in range(0, len(rest), args.batch):
            store.append_many(rest[i : i + args.batch])
        batch_s = time.perf_counter() - t0
        store.close()
        size = os.path.getsize(path)

        t0 = time.perf_counter()
        reopened = LedgerStore(path, PARAMS)
        reopen_s = time.perf_counter() - t0
        reopened.close()

        t0 = time.perf_counter()
        source = audit_mod.load_db(path)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = audit_mod.audit(source)
        audit_s = time.perf_counter() - t0
        assert report.ok, report.problems[:5]
        assert report.blocks == len(blocks)

    result = {
        "blocks": len(blocks),
        "accounts": args.accounts,
        "kinds": {str(k): v for k, v in sorted(kinds.items())},
        "receipts": receipts,
        "generate_s": round(gen_s, 2),
        "append_single_blocks_per_s": round(len(single) / single_s, 1) if single else None,
        "append_batched_blocks_per_s": round(len(rest) / batch_s, 1) if rest else None,
        "batch": args.batch,
        "db_bytes": size,
        "reopen_replay_s": round(reopen_s, 2),
        "audit_load_s": round(load_s, 2),
        "audit_s": round(audit_s, 2),
        "audit_blocks_per_s": round(len(blocks) / audit_s, 1),
        "audit_blocks_per_s_including_load": round(len(blocks) / (audit_s + load_s), 1),
        "audit_receipts_per_s": round(receipts / audit_s, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:36} {v}")


if __name__ == "__main__":
    main()
