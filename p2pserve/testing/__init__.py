"""The shipped test kit (as ``trio.testing``): conformance suites for the pluggable
interfaces and deterministic builders for tests, benchmarks and the simulator.

:mod:`.transport_suite` (every Transport implementation runs it), :mod:`.ledger` (valid
ledger histories from a seeded RNG)."""
