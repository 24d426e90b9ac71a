"""Core: the value types, limits, name patterns, access rules, identities and the dependency graph.

Pure logic shared by client and server; it imports nothing of ours but ``dspex_rx.errors``.
"""
