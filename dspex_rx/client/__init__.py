"""The client: a session facade over variable actors, watches, the cache and one connection.

It never imports the server or the store; ``connect()`` with no target gets its embedded
server from the factory ``dspex_rx`` registers (``client/embedded.py``).
"""

from dspex_rx.client.session import SessionContext, connect

__all__ = ["SessionContext", "connect"]
