"""Dispatch and accept policies: where a request runs, and whether to take someone else's.

Pure decisions: time and randomness are arguments, nothing here does I/O. The serving
service (:mod:`p2pserve.serving.service`) gathers the inputs (backend loads, its own queue, whether
remote candidates exist), asks the policy, and acts on the :data:`Decision`.

A policy is chosen by name in config (``server_params.policy``) through :func:`load_policy`:
a registered name (``"default"``, ``"local-only"``, ``"always-offload"``) or a dotted path
``"package.module:Class"``, so a provider can plug in their own class. Such a class is
called with one :class:`PolicyParams` argument and must satisfy :class:`Policy`.

The default policy keeps WWW.Serve's behaviour and fixes its defects (``docs/notes-wwwserve.md``
says what the original does and what changes):

* requester cascade, decided per request and event-driven (no global 0.5 s tick; many
  requests in flight): a local model under its ``target_token_usage`` → run locally; else
  with probability ``offload_frequency`` → offload; else with probability
  ``queue_frequency`` → queue on the least-queued local model; else wait
  ``retry_interval_s`` and decide again. When an offload round found nobody, the request
  falls back to a local model at once (``docs/protocol.md``, "Inference": "to the next
  candidate, then to a local model").
* a node that serves no local copy of the model (a gateway: ``models: []``) always offloads.
* executor: accept with probability ``accept_frequency``, only while it has capacity (an
  idle local model for the offer and no backlog of its own users).
* load that cannot be read is ``"unknown"`` and never idle (the original reported zeros,
  so a dead backend looked idle and attracted traffic).
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from p2pserve.backends.base import Load
from p2pserve.errors import ConfigError

__all__ = [
    "POLICIES",
    "AlwaysOffloadPolicy",
    "Decision",
    "DefaultPolicy",
    "DispatchParams",
    "LocalModel",
    "LocalOnlyPolicy",
    "OfferContext",
    "Offload",
    "Policy",
    "PolicyParams",
    "Queue",
    "RequestContext",
    "RunLocal",
    "Wait",
    "is_idle",
    "least_queued",
    "load_policy",
]


@dataclass(frozen=True, slots=True)
class PolicyParams:
    """Node-wide policy knobs; the defaults are WWW.Serve's.

    This class is their only home: in YAML they sit flat in ``server_params``
    (``server_params.offload_frequency``), and the config loader builds this from them.
    Validation raises :class:`~p2pserve.errors.ConfigError` starting with the field's name.
    """

    offload_frequency: float = 0.8
    """Probability (per decision) of offloading a request no idle local model can take. Default 0.8."""
    queue_frequency: float = 0.2
    """Probability of queueing on the least-queued local model when not offloading. Default 0.2."""
    accept_frequency: float = 0.8
    """Probability of accepting a peer's offer while this node has capacity. Default 0.8."""
    newcomer_share: float = 0.05
    """Share of offloads whose first candidate is a uniformly drawn zero-stake peer. Default 0.05."""
    offer_fanout: int = 3
    """Candidates offered per offload round, one after the other, first acceptor wins. Default 3."""
    retry_interval_s: float = 0.5
    """Seconds a waiting request sleeps before the policy decides again. Default 0.5."""
    max_wait_s: float = 30.0
    """Seconds a request may wait for an executor before the user gets 503 (no capacity). Default 30."""
    rating_weight: float = 0.0
    """Weigh each peer's stake by its duel rating: ``stake x 10^(rating_weight x (rating -
    1000) / 400)``. 0 (default): stake alone. At 1, a peer rated 100 points above the
    average draws 1.78 times the work its stake alone would."""

    def __post_init__(self) -> None:
        for name in ("offload_frequency", "queue_frequency", "accept_frequency", "newcomer_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name}: must be between 0 and 1 (got {v!r})")
        if self.offer_fanout < 1:
            raise ConfigError(f"offer_fanout: must be at least 1 (got {self.offer_fanout!r})")
        if not self.retry_interval_s > 0:
            raise ConfigError(f"retry_interval_s: must be > 0 (got {self.retry_interval_s!r})")
        if self.max_wait_s < 0:
            raise ConfigError(f"max_wait_s: must be >= 0 (got {self.max_wait_s!r})")
        if not 0.0 <= self.rating_weight <= 4.0:
            raise ConfigError(f"rating_weight: must be between 0 and 4 (got {self.rating_weight!r})")


@dataclass(frozen=True, slots=True)
class DispatchParams:
    """Per-model dispatch knobs (YAML ``models[].dispatch_params``)."""

    target_token_usage: float = 0.6
    """KV-cache usage under which the model counts as idle: between 0 and 1, or -1 (WWW.Serve's
    value for "never idle", so the node never runs new work there unless it queues). Default 0.6."""
    max_concurrency: int | None = None
    """Requests the backend runs at once; ``None`` takes the backend's own ``max_concurrency``.
    Used by the idle test when load comes from in-flight counts. Default None."""

    def __post_init__(self) -> None:
        if not (self.target_token_usage == -1 or 0.0 <= self.target_token_usage <= 1.0):
            raise ConfigError(f"target_token_usage: must be between 0 and 1, or -1 (got {self.target_token_usage!r})")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigError(
                f"max_concurrency: must be at least 1 (or null: the backend's own) (got {self.max_concurrency!r})")


@dataclass(frozen=True, slots=True)
class LocalModel:
    """What a policy knows about one local model when it decides."""

    name: str
    load: Load
    """The backend's load as last read (``source="unknown"`` when it could not be read)."""
    target_token_usage: float
    max_concurrency: int
    inflight: int = 0
    """Requests this node itself has running on the model right now (bursts outrun metrics)."""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One of our own users' requests, at the moment of a decision."""

    model: str
    has_candidates: bool
    """Some peer serves the model, is alive and accepting, and we can afford it."""
    offload_failed: bool = False
    """The last offload round of this request ended with nobody taking it."""
    waited_s: float = 0.0
    """Seconds since the request arrived."""


@dataclass(frozen=True, slots=True)
class OfferContext:
    """A peer's offer, as the executor's accept policy sees it."""

    model: str
    requester: str
    continuation: bool = False
    """The offer continues text another executor already delivered."""


@dataclass(frozen=True, slots=True)
class RunLocal:
    """Run on the named local model now: it has room."""

    model: str


@dataclass(frozen=True, slots=True)
class Queue:
    """Run on the named local model even though it is busy (its backend queues it)."""

    model: str


@dataclass(frozen=True, slots=True)
class Offload:
    """Offer the request to peers chosen by stake."""


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait ``delay`` seconds, then decide again."""

    delay: float


Decision = RunLocal | Queue | Offload | Wait


def is_idle(m: LocalModel) -> bool:
    """Whether ``m`` can take one more request without queueing.

    * ``target_token_usage <= 0`` → never (a pure dispatcher);
    * the node already has ``max_concurrency`` requests of its own there → no;
    * ``"metrics"`` with a token usage → ``token_usage < target``;
    * ``"metrics"`` without one, or ``"inflight"`` → ``running < max_concurrency`` and
      nothing queued;
    * ``"unknown"`` → never: a backend we cannot read is not idle.
    """
    if m.target_token_usage <= 0 or m.inflight >= m.max_concurrency:
        return False
    load = m.load
    if load.source == "unknown":
        return False
    if load.source == "metrics" and load.token_usage is not None:
        return load.token_usage < m.target_token_usage
    return load.running < m.max_concurrency and load.queued == 0


def least_queued(models: Sequence[LocalModel]) -> LocalModel:
    """The model with the fewest queued requests (unknown load sorts last; ties: first listed)."""
    if not models:
        raise ValueError("no local models")
    return min(models, key=lambda m: (m.load.source == "unknown", m.load.queued, m.inflight))


@runtime_checkable
class Policy(Protocol):
    """A dispatch and accept policy. Implementations are pure and must not keep per-request state."""

    def decide(self, request: RequestContext, local: Sequence[LocalModel], now: float, rng: random.Random) -> Decision:
        """Where ``request`` goes now. ``local`` lists the local models that serve it (maybe none)."""
        ...

    def accept(self, offer: OfferContext, local: Sequence[LocalModel], own_backlog: int, rng: random.Random) -> bool:
        """Whether to execute a peer's offer. ``own_backlog``: our own users' requests still waiting."""
        ...

    def accepting(self, local: LocalModel, own_backlog: int) -> bool:
        """Whether to advertise the model as accepting work in our gossiped status."""
        ...


class DefaultPolicy:
    """WWW.Serve's cascade, event-driven, with unknown load treated as busy (module docstring)."""

    def __init__(self, params: PolicyParams) -> None:
        self.params = params

    def decide(self, request: RequestContext, local: Sequence[LocalModel], now: float, rng: random.Random) -> Decision:
        p = self.params
        for m in local:
            if is_idle(m):
                return RunLocal(m.name)
        if not local:
            # a gateway for this model: the network is the only way
            return Offload() if request.has_candidates else Wait(p.retry_interval_s)
        if request.offload_failed:
            # nobody took it (or nobody could): fall back to the local backend's queue
            return Queue(least_queued(local).name)
        if request.has_candidates and rng.random() < p.offload_frequency:
            return Offload()
        if rng.random() < p.queue_frequency:
            return Queue(least_queued(local).name)
        return Wait(p.retry_interval_s)

    def accept(self, offer: OfferContext, local: Sequence[LocalModel], own_backlog: int, rng: random.Random) -> bool:
        if own_backlog > 0 or not any(is_idle(m) for m in local):
            return False
        return rng.random() < self.params.accept_frequency

    def accepting(self, local: LocalModel, own_backlog: int) -> bool:
        return own_backlog == 0 and self.params.accept_frequency > 0 and is_idle(local)


class LocalOnlyPolicy:
    """Never offload, never accept offers: the "single" baseline. Runs everything locally."""

    def __init__(self, params: PolicyParams) -> None:
        self.params = params

    def decide(self, request: RequestContext, local: Sequence[LocalModel], now: float, rng: random.Random) -> Decision:
        for m in local:
            if is_idle(m):
                return RunLocal(m.name)
        if local:
            return Queue(least_queued(local).name)
        return Wait(self.params.retry_interval_s)

    def accept(self, offer: OfferContext, local: Sequence[LocalModel], own_backlog: int, rng: random.Random) -> bool:
        return False

    def accepting(self, local: LocalModel, own_backlog: int) -> bool:
        return False


class AlwaysOffloadPolicy(DefaultPolicy):
    """Offload whenever a candidate exists, else fall back to a local model (demos and tests).

    Accepts offers like the default policy.
    """

    def decide(self, request: RequestContext, local: Sequence[LocalModel], now: float, rng: random.Random) -> Decision:
        if request.has_candidates and not request.offload_failed:
            return Offload()
        if local:
            return Queue(least_queued(local).name)
        return Wait(self.params.retry_interval_s)


POLICIES: dict[str, Callable[[PolicyParams], Policy]] = {
    "always-offload": AlwaysOffloadPolicy,
    "default": DefaultPolicy,
    "local-only": LocalOnlyPolicy,
}
"""Registered policies by config name."""


def load_policy(name: str, params: PolicyParams) -> Policy:
    """The policy named ``name``, built with ``params``; raises ConfigError for an unknown one.

    ``name`` is a key of :data:`POLICIES` or ``"package.module:Class"``; the class is
    imported lazily, called with ``params``, and must provide ``decide``, ``accept`` and
    ``accepting``.
    """
    factory = POLICIES.get(name)
    if factory is None:
        if ":" not in name:
            known = ", ".join(sorted(POLICIES))
            raise ConfigError(f"server_params.policy: unknown policy {name!r} (known: {known}, or 'module:Class')")
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
            factory = getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"server_params.policy: cannot load {name!r}: {exc}") from exc
    try:
        policy = factory(params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"server_params.policy: cannot build {name!r}: {exc}") from exc
    if not isinstance(policy, Policy):
        raise ConfigError(f"server_params.policy: {name!r} does not provide decide, accept and accepting")
    return policy
