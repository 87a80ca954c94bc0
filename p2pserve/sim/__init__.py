"""Many real nodes in one process on the memory transport, under trio's (virtual) clock."""
