"""The product transport: a real py-libp2p 0.8.1 host behind :mod:`p2pserve.transport`.

The entry point is :func:`open_libp2p_transport` (in ``_open``, with the stack, the host
settings and the shutdown order); ``_setup`` holds the process-wide 0.8.1 workarounds,
``_addrs`` listen/dial addresses, ``_stream``, ``_pubsub``, ``_events`` and ``_transport``
the adapters behind :class:`~p2pserve.transport.Transport` (see ``docs/libp2p-notes.md``).
"""

from transports.libp2p._open import Libp2pStream, Libp2pSubscription, Libp2pTransport, open_libp2p_transport

__all__ = ["Libp2pStream", "Libp2pSubscription", "Libp2pTransport", "open_libp2p_transport"]
