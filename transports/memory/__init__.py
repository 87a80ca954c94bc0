"""In-process transport: many nodes in one trio run, simulated latency, loss and partitions.

The public names live in :mod:`transports.memory._network` (the network: links, partitions,
membership), ``_transport`` (:class:`MemoryTransport`: dialing, handlers, gossip,
vanishing), ``_streams`` (:class:`MemoryStream` and its pipes) and ``_queues``
(subscriptions and peer-event iterators); see ``_network`` for the model and invariants.
"""

from transports.memory._network import LinkSpec, MemoryNetwork, MemoryStream, MemorySubscription, MemoryTransport

__all__ = ["LinkSpec", "MemoryNetwork", "MemoryStream", "MemorySubscription", "MemoryTransport"]
