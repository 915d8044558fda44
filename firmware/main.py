# TraceCode badge: start tracing. The host interrupts this (raw REPL) to sync and ends every
# session with a soft reset, which runs this file again.
import tcbadge.app

tc_app = tcbadge.app.App()
tcbadge.app.run_app(tc_app)
