"""Implementations of :mod:`p2pserve.transport`: ``libp2p`` (the product) and ``memory`` (tests, simulator)."""
