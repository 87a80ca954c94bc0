"""The shipped test kit (as ``trio.testing``): conformance suites for the pluggable
interfaces and deterministic builders for tests, benchmarks and the simulator.

:mod:`.transport_suite` (every Transport implementation runs it, including trio's generic
stream checks), :mod:`.ledger` (valid ledger histories from a seeded RNG),
:mod:`.scripted` (a backend that plays a script of deltas, sleeps, failures and hangs in
virtual time), :mod:`.processes` (start, read and stop real ``p2pserve join`` processes).
The node never imports this package; ``p2pserve demo`` uses :mod:`.processes`."""
