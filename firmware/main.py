# TraceCode badge: start tracing. The host interrupts this (raw REPL) to sync and ends every
# session with a soft reset, which runs this file again.
import tcbadge.app

# The host interface is loaded now, on a fresh heap: a host that breaks into the running app
# (no soft reset) would otherwise compile it on a heap fragmented by hours of tracing, where
# one ~3.5 KB compile buffer can fail with 70 KB free (found on the MicroPython VM badge).
try:
    import tcbadge.hostif  # noqa: F401
except (ImportError, MemoryError):
    pass

tc_app = tcbadge.app.App()
tcbadge.app.run_app(tc_app)
