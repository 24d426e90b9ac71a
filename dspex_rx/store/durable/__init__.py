"""The durable image every durable backend shares: the store's state as rows of a key-value
space (``rows``), what changed since the last flush (``image``), rows back into live state
(``load``), and the live backend that group-commits them (``backend.DurableBackend``).
"""
