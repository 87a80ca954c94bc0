"""Async plumbing shared by every stream protocol: framed messages (:mod:`.framed`)."""
