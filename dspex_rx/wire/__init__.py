"""Wire: protobuf codec and conversions, channel options and the security metadata.

Shared by client and server; it knows the messages, not the store or the sessions.
"""
