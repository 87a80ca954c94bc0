"""The node's HTTP API: the app, its guard and server (:mod:`.app`), the OpenAI-compatible
routes (:mod:`.openai`) and the ledger routes (:mod:`.ledger`)."""
