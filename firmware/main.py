# TraceCode badge: start tracing.
# Locked (/tc/locked): the keyboard interrupt stays off, the app serves the framed host
# protocol (tcbadge/hostproto.py) beside tracing, and this file never returns to the REPL:
# an app that ends, however, resets the badge.
# Developer mode: the host interrupts this (raw REPL) to sync and ends every session with a
# soft reset, which runs this file again.
import micropython

micropython.kbd_intr(-1)  # MicroPython turned it on again for this script
import os

try:
    os.stat("/tc/locked")
    tc_locked = True
except OSError:
    tc_locked = False
    micropython.kbd_intr(3)


# No ballast block is held while compiling: compiling is the largest transient, and the
# app's long-lived tables are small arrays (none above 5 KB) taken before it reads files.
if tc_locked:
    try:
        import tcbadge.hostproto

        tcbadge.hostproto.main()  # the locked app; returns only when it ended
    except Exception:  # noqa: BLE001 - never the REPL: reset below
        pass
    except KeyboardInterrupt:
        pass
    except SystemExit:
        pass
    import machine

    machine.reset()
else:
    import tcbadge.app

    # The host interface is loaded now, on a fresh heap: a host that breaks into the running
    # app (no soft reset) would otherwise compile it on a heap fragmented by hours of tracing,
    # where one ~3.5 KB compile buffer can fail with 70 KB free (found on the MicroPython VM
    # badge).
    try:
        import tcbadge.hostif  # noqa: F401
    except (ImportError, MemoryError):
        pass

    import gc

    gc.collect()
    tc_app = tcbadge.app.App()
    tcbadge.app.run_app(tc_app)
