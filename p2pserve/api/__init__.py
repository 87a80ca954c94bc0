"""The node's HTTP API: the app, its guard and server (:mod:`.app`), the OpenAI-compatible
routes (:mod:`.openai`), the ledger routes (:mod:`.ledger`), status JSON and readiness
(:mod:`.status`), Prometheus metrics (:mod:`.metrics`), ``/health`` and ``/ready``
(:mod:`.health`) and the status page at ``/`` (:mod:`.page`, files in ``static/``)."""
