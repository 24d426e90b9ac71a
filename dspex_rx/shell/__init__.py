"""The shell client: ``dspex-rx get/set/watch/ls/...`` over the public client API, with
human-readable output by default and JSON (Lines) for scripts."""
