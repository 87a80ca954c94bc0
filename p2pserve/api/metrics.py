"""What ``/metrics`` shows of a running node: Prometheus exposition through ``prometheus_client``.

One :class:`NodeMetrics` per node, with its own ``CollectorRegistry`` (several nodes run in
one process in tests and the simulator: the library's global default registry is never
touched). It holds two kinds of metric:

* observed as requests end (the API's :data:`~p2pserve.api.openai.RequestObserver`):
  ``p2pserve_request_duration_seconds`` and ``p2pserve_time_to_first_token_seconds``
  (histograms by ``model`` and ``where``), ``p2pserve_tokens_total`` and the own-request
  series of ``p2pserve_requests_total``; plus the last :data:`RECENT` requests for the status
  page;
* read from the node's services at each scrape by :class:`NodeCollector` (counters the
  services already keep, gauges of peers, models, credit, the ledger and duels), so nothing
  is counted twice and a scrape is a few attribute reads.

Credit is in credits (``/ 1e6`` of the ledger's micro-credits). Label values are escaped by
the library, so a model named ``a"b`` cannot break a scrape. Process metrics (``process_*``,
``python_*``) come from the library's collectors, registered on the node's registry.

Metric names (``_total``: counters):

==========================================  =========================================================
``p2pserve_node_info``                      ``peer_id``, ``network_id`` (value 1)
``p2pserve_uptime_seconds``                 since the node started
``p2pserve_requests_total``                 ``outcome`` x ``where``: own users' requests through the
                                            API (``where`` local/offloaded/none; ``outcome``
                                            completed, cancelled or the error type), and peers'
                                            requests executed here (``where="peer"``)
``p2pserve_request_duration_seconds``       histogram, completed own requests, ``model`` x ``where``
``p2pserve_time_to_first_token_seconds``    histogram, own requests that got text, ``model`` x ``where``
``p2pserve_tokens_total``                   ``model`` x ``where`` x ``direction`` (``in``: prompt, ``out``)
``p2pserve_offers_total``                   peers' offers: ``result`` completed / rejected
``p2pserve_failovers_total``                own requests moved to another executor
``p2pserve_bad_receipts_total``             executors' receipts that did not verify
``p2pserve_peers``                          peers known (fresh statuses)
``p2pserve_connected_peers``                transport connections
``p2pserve_status_{published,received,rejected}_total``  gossiped statuses
``p2pserve_model_{running,queued,token_usage,accepting,up}``  per local ``model``
``p2pserve_ledger_{free,staked,unbonding,earned,unclaimed}_credits``  this node's credit
``p2pserve_ledger_height``                  this node's chain height (-1 before its open block)
``p2pserve_ledger_blocks``                  blocks stored (every account)
``p2pserve_ledger_pending_blocks``          blocks waiting for their predecessors
``p2pserve_ledger_verdicts``                verdict blocks applied
``p2pserve_ledger_paid_receipts_total``     receipts our pay blocks settled
``p2pserve_ledger_claims_total``            claim blocks we wrote
``p2pserve_duels_total``                    duels we started, by ``state`` started/settled/abandoned/unjudged
``p2pserve_duel_results``                   counted verdicts on us, by ``result`` won/lost/tied/judged
``p2pserve_duel_rating``                    our Bradley-Terry rating (absent before our first verdict)
==========================================  =========================================================
"""

from __future__ import annotations

import dataclasses
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import trio
from prometheus_client import CollectorRegistry, GCCollector, Histogram, PlatformCollector, ProcessCollector
from prometheus_client import Counter as PromCounter
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from p2pserve.api.openai import RequestRecord
from p2pserve.api.status import NodeView, backends_down, duel_record
from p2pserve.errors import MalformedMessage
from p2pserve.ledger.blocks import ClaimBody, Kind, decode_body
from p2pserve.ledger.service import LedgerService
from p2pserve.units import MICRO

__all__ = [
    "LATENCY_BUCKETS",
    "RECENT",
    "TTFT_BUCKETS",
    "EarnedTally",
    "NodeCollector",
    "NodeMetrics",
]

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
"""Request duration buckets (s): a short local answer to ``request_timeout``'s default."""
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
"""Time-to-first-token buckets (s), up to ``Deadlines.first_token_s``."""
RECENT = 20
"""Requests kept for the status page."""


class EarnedTally:
    """Credit credited to this node by its own claim blocks (payments for work it served,
    judges' fees, duel awards), summed incrementally: each scrape reads only the blocks of
    our chain it has not read yet; a rewritten chain (a repair) is summed again from its
    open. Void claims (citing an equivocator's dropped branch) credit nothing and are skipped."""

    def __init__(self, ledger: LedgerService, *, batch: int = 256) -> None:
        self.ledger = ledger
        self.batch = batch
        self._height = -1
        self._head: bytes | None = None
        self._total = 0

    def total(self) -> int:
        """Micro-credits earned so far, as our chain shows now."""
        store = self.ledger.store
        state = store.state
        me = self.ledger.account
        acct = state.account(me)
        if acct is None or (self._height >= 0 and state.hash_at(me, self._height) != self._head):
            self._height, self._head, self._total = -1, None, 0
        if acct is None:
            return 0
        while self._height < acct.height:
            blocks = store.blocks_after(me, self._height, self.batch)
            if not blocks:
                break
            for block in blocks:
                if block.kind == Kind.CLAIM:
                    self._total += self._credited(block.body)
                self._height, self._head = block.height, block.digest()
        return self._total

    def _credited(self, raw: bytes) -> int:
        try:
            body, _ = decode_body(Kind.CLAIM, raw)
        except MalformedMessage:  # stored blocks were checked on the way in; never here
            return 0
        assert isinstance(body, ClaimBody)
        return 0 if body.source_hash in self.ledger.store.state.core.voided else body.amount


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(family: GaugeMetricFamily | CounterMetricFamily, rows: Iterable[tuple[list[str], float]]) -> Metric:
    for labels, value in rows:
        family.add_metric(labels, value)
    return family


class NodeCollector(Collector):
    """Reads a node's services at each scrape (see the module doc for the names)."""

    def __init__(self, node: NodeView, metrics: NodeMetrics) -> None:
        self.node = node
        self.metrics = metrics
        self.earned = EarnedTally(node.ledger)

    def collect(self) -> Iterator[Metric]:
        node = self.node
        info = InfoMetricFamily("p2pserve_node", "This node's identity.")
        info.add_metric([], {"peer_id": node.peer_id, "network_id": node.network_id})
        yield info
        yield _gauge("p2pserve_uptime_seconds", "Seconds since the node started.", trio.current_time() - node.started_at)
        yield from self._serving()
        yield from self._membership()
        yield from self._models()
        yield from self._ledger()
        yield from self._duels()

    def _serving(self) -> Iterator[Metric]:
        c = self.node.serve.counters
        requests = CounterMetricFamily(
            "p2pserve_requests",
            "Requests by outcome (completed, cancelled, or the error type) and where they ran: own users' requests "
            "through the API (local, offloaded, none), peers' requests this node executed (peer).",
            labels=["outcome", "where"],
        )
        rows = Counter(self.metrics.outcomes)
        for where in ("local", "offloaded"):
            rows[("completed", where)] += 0  # always present, so rates start at 0
        rows[("completed", "peer")] = c.served_for_peers
        yield _labelled(requests, (([o, w], v) for (o, w), v in sorted(rows.items())))
        offers = CounterMetricFamily("p2pserve_offers", "Peers' offers to this node: accepted and completed, or rejected "
                                     "(busy, no credit, replayed, wrong price, backend down).", labels=["result"])
        yield _labelled(offers, [(["completed"], c.served_for_peers), (["rejected"], c.offers_rejected)])
        yield _counter("p2pserve_failovers", "Times one of our requests moved to another executor.", c.failovers)
        yield _counter("p2pserve_bad_receipts", "Executors' receipts that did not verify (not paid).", c.bad_receipts)

    def _membership(self) -> Iterator[Metric]:
        node = self.node
        yield _gauge("p2pserve_peers", "Peers known (with a fresh signed status).", len(node.peers))
        yield _gauge("p2pserve_connected_peers", "Peers with an open transport connection.", len(node.transport.connected_peers()))
        g = node.gossip
        yield _counter("p2pserve_status_published", "Statuses this node published.", g.published)
        yield _counter("p2pserve_status_received", "Peers' statuses accepted.", g.received)
        yield _counter("p2pserve_status_rejected", "Peers' statuses refused (bad signature, stale, too fast, ...).", g.rejected)

    def _models(self) -> Iterator[Metric]:
        models = self.node.serve.model_status()
        down: Mapping[str, str] = backends_down(self.node)
        fams: list[tuple[str, str, Any]] = [
            ("p2pserve_model_running", "Requests running on a local model (ours and peers').", lambda m: m.running),
            ("p2pserve_model_queued", "Requests queued for a local model.", lambda m: m.queued),
            ("p2pserve_model_token_usage", "KV-cache usage of a local model's backend (0..1).", lambda m: m.token_usage),
            ("p2pserve_model_accepting", "1 if the local model takes peers' work now.", lambda m: int(m.accepting)),
            ("p2pserve_model_up", "1 unless the local model's backend is marked down.", lambda m: int(m.name not in down)),
        ]
        for name, doc, read in fams:
            rows = (([m.name], v) for m in models if (v := read(m)) is not None)  # token usage may be unknown
            yield _labelled(GaugeMetricFamily(name, doc, labels=["model"]), rows)

    def _ledger(self) -> Iterator[Metric]:
        ledger = self.node.ledger
        state = ledger.store.state
        acct = state.account(ledger.account)
        unclaimed = sum(c.amount for c in state.unclaimed_for(ledger.account))
        credit = [
            ("free", "Free (spendable) credit.", ledger.free()),
            ("staked", "Staked credit.", ledger.staked()),
            ("unbonding", "Credit unstaked and waiting for release.", acct.unbonding_total if acct else 0),
            ("earned", "Credit this node's claims credited it (served work, judging, duel awards).", self.earned.total()),
            ("unclaimed", "Credit paid to this node and not claimed yet.", unclaimed),
        ]
        for part, doc, micro in credit:
            yield _gauge(f"p2pserve_ledger_{part}_credits", doc, micro / MICRO)
        yield _gauge("p2pserve_ledger_height", "This node's chain height (-1 before its open block).", acct.height if acct else -1)
        yield _gauge("p2pserve_ledger_blocks", "Ledger blocks stored (every account).", ledger.store.count())
        yield _gauge("p2pserve_ledger_pending_blocks", "Blocks waiting for their predecessors.", ledger.store.pending_count())
        yield _gauge("p2pserve_ledger_verdicts", "Verdict blocks applied.", state.verdict_count())
        yield _counter("p2pserve_ledger_paid_receipts", "Receipts this node's pay blocks settled.", ledger.paid)
        yield _counter("p2pserve_ledger_claims", "Claim blocks this node wrote.", ledger.claimed)

    def _duels(self) -> Iterator[Metric]:
        c = self.node.duels.counters
        duels = CounterMetricFamily("p2pserve_duels", "Duels this node started as requester, by state.", labels=["state"])
        yield _labelled(duels, [(["started"], c.started), (["settled"], c.settled), (["abandoned"], c.abandoned),
                                (["unjudged"], c.no_judge)])
        record = duel_record(self.node)
        results = GaugeMetricFamily("p2pserve_duel_results", "Counted verdicts on this node as executor (won, lost, "
                                    "tied) and as judge (judged).", labels=["result"])
        yield _labelled(results, (([r], record[r]) for r in ("won", "lost", "tied", "judged")))
        rating = self.node.ledger.ratings().get(self.node.peer_id)
        if rating is not None:
            yield _gauge("p2pserve_duel_rating", "This node's Bradley-Terry rating from counted verdicts.", rating.rating)


class _WithoutCreated(Collector):
    """Another registry's metrics minus their ``_created`` samples: in the 0.0.4 text format
    the library writes each as an extra gauge family of wall-clock start times per series,
    which only clutters a node's scrape (the process start time is already there)."""

    def __init__(self, inner: CollectorRegistry) -> None:
        self.inner = inner

    def collect(self) -> Iterator[Metric]:
        for metric in self.inner.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


class NodeMetrics:
    """A node's registry, its request histograms and its recent requests (module doc)."""

    def __init__(self, node: NodeView, *, process: bool = True) -> None:
        """``process``: also register the library's process, platform and GC collectors."""
        self.registry = CollectorRegistry()
        self.outcomes: Counter[tuple[str, str]] = Counter()
        """Own requests by ``(outcome, where)``."""
        self.recent: deque[RequestRecord] = deque(maxlen=RECENT)
        observed = CollectorRegistry()
        labels = ["model", "where"]
        self.duration = Histogram("p2pserve_request_duration_seconds", "Completed own requests, from the parsed request "
                                  "to the last token.", labels, registry=observed, buckets=LATENCY_BUCKETS)
        self.ttft = Histogram("p2pserve_time_to_first_token_seconds", "Own requests, from the parsed request to the "
                              "first text.", labels, registry=observed, buckets=TTFT_BUCKETS)
        self.tokens = PromCounter("p2pserve_tokens", "Tokens of completed own requests (in: prompt, out: completion).",
                                  [*labels, "direction"], registry=observed)
        self.registry.register(_WithoutCreated(observed))
        self.registry.register(NodeCollector(node, self))
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def observe(self, record: RequestRecord) -> None:
        """Count one ended request (the API's observer). Histograms are labelled by model
        only for requests that ran (their model exists), so a client cannot add series by
        asking for made-up models."""
        self.outcomes[(record.outcome, record.where)] += 1
        self.recent.append(record)
        if record.where == "none":
            return
        labels = (record.model, record.where)
        if record.ttft_s is not None:
            self.ttft.labels(*labels).observe(record.ttft_s)
        if record.outcome == "completed":
            self.duration.labels(*labels).observe(record.duration_s)
            self.tokens.labels(*labels, "in").inc(record.prompt_tokens)
            self.tokens.labels(*labels, "out").inc(record.completion_tokens)

    def recent_json(self) -> list[dict[str, Any]]:
        """The recent requests, newest first, for the status JSON."""
        out = []
        for r in reversed(self.recent):
            d = dataclasses.asdict(r)
            d["duration_s"] = round(r.duration_s, 4)
            d["ttft_s"] = None if r.ttft_s is None else round(r.ttft_s, 4)
            out.append(d)
        return out

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of everything in the registry."""
        return generate_latest(self.registry).decode()
