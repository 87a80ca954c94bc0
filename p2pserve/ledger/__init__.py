"""The signed credit ledger (block-lattice): blocks, pure rules, SQLite store, audit, sync.

``blocks`` and ``rules`` are pure (no I/O); ``store`` (SQLite), ``audit`` and ``sync``
(trio services over the transport contract) are imported from their own modules so that
importing the pure part never pulls in sqlite3 or trio. See docs/ledger.md.
"""
