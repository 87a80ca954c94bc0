"""Who is in the network: the pure peer table (:mod:`.table`), the memo of verified statuses
(:mod:`.verified`) and the status gossip service that keeps the table (:mod:`.gossip`)."""
