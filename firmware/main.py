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


if tc_locked:
    try:
        # Every module is compiled first, the garbage of compiling collected, then the long-
        # lived buffers are taken: on the VM badge's ESP32-sized heap, compiling hostproto
        # after the app's tables exist (or the app after its frame buffer) fails with
        # MemoryError in some layouts; this order boots with ~10 KB (64-bit) to spare.
        import gc

        import tcbadge.hostproto
        import tcbadge.app

        gc.collect()
        tc_host = tcbadge.hostproto.Server()
        tc_app = tcbadge.app.App()
        tc_host.attach(tc_app)
        tcbadge.app.run_app(tc_app)
    except Exception as e:  # noqa: BLE001 - never the REPL: recorded, then reset below
        try:
            import sys

            with open("/tc/crash.txt", "w") as f:
                f.write("main.py: ")
                sys.print_exception(e, f)
        except Exception:  # noqa: BLE001
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

    tc_app = tcbadge.app.App()
    tcbadge.app.run_app(tc_app)
