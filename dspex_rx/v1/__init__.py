"""Generated wire code for dspex_rx.v1 (from proto/ by ``make proto``; do not edit the *_pb2 files)."""
