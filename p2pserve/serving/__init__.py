"""Serving requests: run locally, or offer them to peers over ``/p2pserve/infer/1``.

:mod:`.service` (the facade: ``ServeService``), :mod:`.client` (the requester side),
:mod:`.executor` (the executor side), :mod:`.events` (the vocabulary), :mod:`.receipts`
(prices, receipt bounds and checks, the replay guard), :mod:`.offenders` (who misbehaved),
:mod:`.replay_log` (offers taken, across restarts)."""
