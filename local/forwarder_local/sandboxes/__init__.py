"""Local vendor sandboxes: real HTTP servers that behave as the vendors' documents say.

Each sandbox runs in a daemon thread, keeps its state in memory and exposes admin routes under
``/_sandbox/`` (fault injection, latency, reset, state) so tests can exercise the forwarder's
error handling against an honest, strict counterpart.
"""
