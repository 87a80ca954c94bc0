"""LLM backends behind one interface (:mod:`p2pserve.backends.base`)."""

from p2pserve.backends.base import Backend, Finished, GenerationEvent, Kind, Load, LoadSource, TextDelta

__all__ = ["Backend", "Finished", "GenerationEvent", "Kind", "Load", "LoadSource", "TextDelta"]
