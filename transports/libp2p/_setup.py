"""Process-wide py-libp2p 0.8.1 workarounds and the transport's logging.

What this module owns, and its invariants:

* **The logger.** ``log`` is the ``transports.libp2p`` logger (the public module's name,
  which is what applications configure), shared by every ``transports.libp2p._*`` module.
  libp2p's own WARNING and above is forwarded to ``transports.libp2p.library``.
* **Workarounds for 0.8.1** (measured and explained in ``docs/libp2p-notes.md``): the 250 ms
  happy-eyeballs dial delay is set to 0; ``PY_YAMUX_RELEASE_ON_READ=0`` and yamux window
  updates batched per half window; signed peer records built once per second and verified
  once per peer and record, not per pubsub RPC; free locks taken without a schedule point
  (``P2PSERVE_NO_QUICK_LOCKS=1`` turns it off); libp2p modules that log through the root
  logger get a stand-in ``logging`` that cannot run ``basicConfig()``; ``multiaddr``'s
  per-parse DEBUG logging is raised to INFO unless configured; a subscription's queue holds
  ``SUBSCRIPTION_QUEUE`` messages instead of 32 (under a burst, libp2p's validation tasks all
  run before our drain task, and a full queue drops honest messages along with the burst); a
  TCP connection is read 64 KiB ahead instead of in exact pieces (``P2PSERVE_NO_READ_AHEAD=1``
  turns it off, for measuring). These are process-wide module globals, applied once by
  :func:`_configure_process` on first use (it is idempotent). The gossipsub settings and
  the disabled auto-connector are per host: see :mod:`transports.libp2p`.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import weakref
from typing import Any

import libp2p.io.trio as _libp2p_io_trio
import libp2p.network.stream.net_stream as _libp2p_net_stream
import libp2p.network.swarm as _libp2p_swarm
import libp2p.pubsub.floodsub as _libp2p_floodsub
import libp2p.pubsub.gossipsub as _libp2p_gossipsub
import libp2p.pubsub.pubsub as _libp2p_pubsub
import libp2p.stream_muxer.rw_lock as _libp2p_rw_lock
import libp2p.stream_muxer.yamux.yamux as _libp2p_yamux
import trio

# Importing libp2p runs its logging setup, which wipes the "libp2p" logger's handlers:
# our logging configuration below must come after this import.
import libp2p  # noqa: F401  (import order matters)

log = logging.getLogger("transports.libp2p")


class _ForwardHandler(logging.Handler):
    """Re-emits libp2p records on our logger, so they follow the application's config."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__(logging.WARNING)
        self._target = target

    def emit(self, record: logging.LogRecord) -> None:
        if self._target.isEnabledFor(record.levelno):
            self._target.handle(record)


class _ModuleLogging:
    """Stands in for the ``logging`` module inside libp2p modules that log through the
    root logger: ``logging.debug(...)`` on a handler-less root calls ``basicConfig()``,
    which would install a stderr handler for the whole application. Log calls go to the
    module's own (``libp2p.*``) logger instead; everything else is the real module."""

    _CALLS = frozenset({"debug", "info", "warning", "error", "exception", "critical", "log"})

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def __getattr__(self, attr: str) -> Any:
        if attr in self._CALLS:
            return getattr(self._logger, attr)
        return getattr(logging, attr)


SUBSCRIPTION_QUEUE = 1024
"""libp2p's per-topic subscription queue (its default, 32, overflowed at ~3,400 statuses/s)."""

_ROOT_LOGGING_MODULES = ("libp2p.network.connection.swarm_connection", "libp2p.tools.utils")

_configured = False

READ_AHEAD = 64 * 1024
"""Bytes a TCP connection reads at once (see :func:`_read_ahead`)."""


def _read_ahead(original: Any) -> Any:
    """``TrioTCPStream.read`` that reads up to :data:`READ_AHEAD` bytes per system call and
    serves the next reads from them.

    py-libp2p reads a connection in exact pieces: each Noise message is a 2-byte length, then
    its body, each through its own ``recv`` (and, when it would block, its own trip through
    trio's I/O loop); yamux headers are 12 bytes more. Reading ahead turns a burst of frames
    into one ``recv``. ``read(n)`` still returns at most ``n`` bytes (what callers expect of
    it); the bytes read ahead belong to the connection object, read only by its one reader.
    """

    async def read(self: Any, n: int | None = None) -> bytes:
        ahead: bytes | None = self.__dict__.get("_p2pserve_ahead")
        if ahead:
            pos: int = self.__dict__["_p2pserve_pos"]
            end = len(ahead) if n is None else min(len(ahead), pos + n)
            out = ahead[pos:end]
            if end == len(ahead):
                self.__dict__["_p2pserve_ahead"] = None
            else:
                self.__dict__["_p2pserve_pos"] = end
            return out
        if n is None or n == 0:
            return bytes(await original(self, n))
        data = bytes(await original(self, max(n, READ_AHEAD)))
        if len(data) <= n:
            return data
        self.__dict__["_p2pserve_ahead"] = data
        self.__dict__["_p2pserve_pos"] = n
        return data[:n]

    read.__wrapped__ = original  # type: ignore[attr-defined]
    return read


def _batched_release(original: Any) -> Any:
    """``YamuxStream._auto_tune_and_send_window_update`` that returns read bytes to the sender
    in batches of half the receive window, as go-yamux does.

    0.8.1's version sends a WINDOW_UPDATE after nearly every read (its "partial slack" branch
    fires whenever any byte was read), so each chunk a stream receives costs a frame back:
    encrypted, written and parsed by the sender. Here the bytes read are only counted until
    they reach half the window (then the original sends one update, growing the window as
    before); the sender is never blocked while at least half its window is left.
    """

    async def release(self: Any, *, bytes_read: int = 0) -> None:
        pending = self._pending_recv_release + bytes_read
        if bytes_read > 0 and pending < self._grow_threshold():
            self._pending_recv_release = pending  # no await: the window lock guards nothing here
            return
        await original(self, bytes_read=bytes_read)

    release.__wrapped__ = original  # type: ignore[attr-defined]
    return release


RECORD_REFRESH_S = 60.0
"""How long a peer's signed peer record, received again byte for byte, is not re-verified."""
RECORD_MEMO = 4096
"""Peers whose last record each host remembers (forgotten all at once past this)."""
ENVELOPE_TTL_S = 1.0
"""How long a host reuses its own signed peer record's bytes before rebuilding them."""


def _reused_envelope(original: Any) -> Any:
    """``env_to_send_in_RPC`` that rebuilds a host's own signed peer record at most once per
    :data:`ENVELOPE_TTL_S`.

    0.8.1 attaches the record to every pubsub RPC it sends and, for each, lists the host's
    addresses again (parsing multiaddrs through the address factory), unpacks its cached
    record to compare them and marshals it again: ~230 us per RPC here, for bytes that change
    only when the listen addresses do.
    """
    cache: weakref.WeakKeyDictionary[Any, tuple[float, tuple[bytes, bool]]] = weakref.WeakKeyDictionary()

    def env_to_send_in_RPC(host: Any) -> tuple[bytes, bool]:  # noqa: N802 (libp2p's name)
        now = trio.current_time()
        hit = cache.get(host)
        if hit is not None and now - hit[0] < ENVELOPE_TTL_S:
            return hit[1][0], False
        result: tuple[bytes, bool] = original(host)
        cache[host] = (now, result)
        return result

    env_to_send_in_RPC.__wrapped__ = original  # type: ignore[attr-defined]
    return env_to_send_in_RPC


def _remembered_records(original: Any) -> Any:
    """``maybe_consume_signed_record`` that does not verify a peer's record again when the
    peer sends the very bytes it sent last, accepted, within :data:`RECORD_REFRESH_S`.

    0.8.1 verifies the record's signature and rewrites the peer's addresses for every pubsub
    RPC received (~160 us each here), though peers resend the same record each time. The
    same bytes from the same peer verify the same way; what is skipped is only the refresh
    of the addresses' 2-hour TTL, done again once the memo is older than the refresh period.
    A different record (new addresses, new sequence number) is checked as before.
    """
    memo: weakref.WeakKeyDictionary[Any, dict[Any, tuple[bytes, float]]] = weakref.WeakKeyDictionary()

    def maybe_consume_signed_record(msg: Any, host: Any, peer_id: Any) -> bool:
        if not msg.HasField("senderRecord"):
            return True
        record: bytes = msg.senderRecord
        now = trio.current_time()
        seen = memo.setdefault(host, {})
        last = seen.get(peer_id)
        if last is not None and last[0] == record and now - last[1] < RECORD_REFRESH_S:
            return True
        ok: bool = original(msg, host, peer_id)
        if len(seen) >= RECORD_MEMO:
            seen.clear()
        if ok:
            seen[peer_id] = (record, now)
        else:
            seen.pop(peer_id, None)
        return ok

    maybe_consume_signed_record.__wrapped__ = original  # type: ignore[attr-defined]
    return maybe_consume_signed_record


class _Quick:
    """A trio lock or semaphore (``_inner``) whose acquire does not yield while it is free.

    trio's ``acquire`` always ends in a checkpoint that reschedules the task, even when the
    lock was free: one trip through the run loop (and an ``epoll_wait``) per acquire.
    py-libp2p takes five such locks per frame written and several per read, ~30 per routed
    request. Here a free one is taken at once (a pending cancellation is still raised); a
    held one is waited for fairly, by trio's own primitive. Every path through py-libp2p
    that takes these locks also reaches a real checkpoint (a socket operation, an event, a
    sleep), so no loop of it can spin without yielding.
    """

    __slots__ = ("_inner",)
    _inner: Any

    def _free(self) -> bool:
        raise NotImplementedError

    async def acquire(self) -> None:
        if not self._free():
            await self._inner.acquire()
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        self._inner.acquire_nowait()

    def acquire_nowait(self) -> None:
        self._inner.acquire_nowait()

    def release(self) -> None:
        self._inner.release()

    def statistics(self) -> Any:
        return self._inner.statistics()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class _QuickLock(_Quick):
    """A quick ``trio.Lock`` (see :class:`_Quick`)."""

    __slots__ = ()

    def __init__(self) -> None:
        self._inner = trio.Lock()

    def _free(self) -> bool:
        return not self._inner.locked()  # a free trio lock has no waiters: a release hands it over

    def locked(self) -> bool:
        return bool(self._inner.locked())


class _QuickSemaphore(_Quick):
    """A quick ``trio.Semaphore``, for py-libp2p's yamux read/write lock (see :class:`_Quick`)."""

    __slots__ = ()

    def __init__(self, value: int) -> None:
        self._inner = trio.Semaphore(value)

    def _free(self) -> bool:
        return self._inner.value > 0 and not self._inner.statistics().tasks_waiting

    @property
    def value(self) -> int:
        return int(self._inner.value)


_QUICK_LOCKS: tuple[tuple[Any, tuple[str, ...]], ...] = (
    (_libp2p_net_stream.NetStream, ("_state_lock",)),
    (_libp2p_yamux.YamuxStream, ("window_lock", "close_lock")),
    # not Yamux.streams_lock: quick, it lets a race in 0.8.1's stream set-up lose a new
    # gossipsub stream's first messages (tests/test_transport_libp2p.py's line of three hosts
    # failed 40 runs of 40 under CPU load with it quick and the TCP locks not; 0 of 40 without)
    (_libp2p_yamux.Yamux, ("_write_lock",)),
    (_libp2p_io_trio.TrioTCPStream, ("read_lock", "write_lock")),
    (_libp2p_rw_lock.ReadWriteLock, ("_readers_lock",)),
)
"""py-libp2p objects whose trio locks become :class:`_QuickLock` s, by attribute."""


def _with_quick_locks(init: Any, names: tuple[str, ...]) -> Any:
    """``__init__`` that replaces the trio locks it created under ``names`` (and a
    ReadWriteLock's writer semaphore) with quick ones."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        init(self, *args, **kwargs)
        for name in names:
            if isinstance(getattr(self, name, None), trio.Lock):
                setattr(self, name, _QuickLock())
        sem = getattr(self, "_writer_lock", None)
        if isinstance(sem, trio.Semaphore) and isinstance(self, _libp2p_rw_lock.ReadWriteLock):
            self._writer_lock = _QuickSemaphore(sem.value)  # type: ignore[assignment]  # duck-typed: acquire, release

    __init__.__wrapped__ = init  # type: ignore[attr-defined]
    return __init__


def _configure_process() -> None:
    """Apply the process-wide 0.8.1 workarounds once (idempotent)."""
    global _configured
    if _configured:
        return
    _configured = True
    # read TCP connections ahead instead of in exact 2-, 12- and N-byte pieces
    if not hasattr(_libp2p_io_trio.TrioTCPStream.read, "__wrapped__") and not os.environ.get("P2PSERVE_NO_READ_AHEAD"):
        _libp2p_io_trio.TrioTCPStream.read = _read_ahead(_libp2p_io_trio.TrioTCPStream.read)  # type: ignore[method-assign]
    # connect() otherwise always waits 250 ms before the first dial, even with one address
    _libp2p_swarm._HAPPY_EYEBALLS_DELAY = 0.0
    # locks that do not yield when free (see _Quick)
    if not os.environ.get("P2PSERVE_NO_QUICK_LOCKS"):
        for cls, names in _QUICK_LOCKS:
            if not hasattr(cls.__init__, "__wrapped__"):
                cls.__init__ = _with_quick_locks(cls.__init__, names)
    # signed peer records: built once per second, and verified once per peer and record
    for module in (_libp2p_pubsub, _libp2p_gossipsub, _libp2p_floodsub):
        if not hasattr(module.env_to_send_in_RPC, "__wrapped__"):
            module.env_to_send_in_RPC = _reused_envelope(module.env_to_send_in_RPC)  # type: ignore[attr-defined]
        if not hasattr(module.maybe_consume_signed_record, "__wrapped__"):
            module.maybe_consume_signed_record = _remembered_records(module.maybe_consume_signed_record)  # type: ignore[attr-defined]
    # read by Pubsub.subscribe at call time
    _libp2p_pubsub.SUBSCRIPTION_CHANNEL_SIZE = max(_libp2p_pubsub.SUBSCRIPTION_CHANNEL_SIZE, SUBSCRIPTION_QUEUE)
    # yamux sends ~3 WINDOW_UPDATEs per DATA frame by default; read at call time
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    # and with that off still about one per read: batch them (see _batched_release)
    stream = _libp2p_yamux.YamuxStream
    if not hasattr(stream._auto_tune_and_send_window_update, "__wrapped__"):
        stream._auto_tune_and_send_window_update = _batched_release(stream._auto_tune_and_send_window_update)  # type: ignore[method-assign]
    # libp2p's import leaves its logger handler-less with propagate=False, so its
    # warnings (many are harmless shutdown races) hit stderr through logging.lastResort.
    # Route WARNING and above to our own logger instead; a NullHandler there keeps
    # lastResort quiet when the application configured no logging at all.
    library_log = logging.getLogger(f"{log.name}.library")
    library_log.addHandler(logging.NullHandler())
    logging.getLogger("libp2p").addHandler(_ForwardHandler(library_log))
    for name in _ROOT_LOGGING_MODULES:
        module = sys.modules.get(name) or importlib.import_module(name)
        if getattr(module, "logging", None) is logging:
            module.logging = _ModuleLogging(name)  # type: ignore[attr-defined]
    # multiaddr logs every parse at DEBUG; keep it out of an application's debug log
    multiaddr_log = logging.getLogger("multiaddr")
    if multiaddr_log.level == logging.NOTSET:
        multiaddr_log.setLevel(logging.INFO)

