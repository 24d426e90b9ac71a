"""The reactive-UI bridge (an ASGI app of Server-Sent Events and WebSockets over
``observe()``) and the live web view served by ``dspex-rx ui``."""
