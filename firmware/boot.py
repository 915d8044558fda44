# TraceCode badge boot. First, before anything else: the keyboard interrupt goes off, so on a
# locked badge (/tc/locked, docs/hostif.md version 2) Ctrl-C is an ordinary byte from here on
# (MicroPython turns it back on for each script it runs: main.py turns it off again).
import micropython

micropython.kbd_intr(-1)
import os

try:
    os.stat("/tc/locked")
    tc_locked = True
except OSError:
    tc_locked = False
    micropython.kbd_intr(3)


def tc_finish_update():
    # A firmware update committed by the host (hostproto COMMIT: every staged file checked):
    # move the listed files from /fw.new into place, then drop the staging folder. Here, in
    # every boot before anything is imported, a power cut halfway is finished at the next.
    try:
        with open("/fw.new/commit.txt") as f:
            names = f.read().split("\n")
    except OSError:
        return
    for p in names:
        if not p:
            continue
        i = p.find("/")
        while i >= 0:
            try:
                os.mkdir("/" + p[:i])
            except OSError:
                pass
            i = p.find("/", i + 1)
        try:
            os.rename("/fw.new/" + p, "/" + p)
        except OSError:
            pass  # moved before the cut
    stack = ["/fw.new"]
    dirs = []
    while stack:
        d = stack.pop()
        dirs.append(d)
        try:
            for e in list(os.ilistdir(d)):
                if e[1] == 0x4000:
                    stack.append(d + "/" + e[0])
                else:
                    os.remove(d + "/" + e[0])
        except OSError:
            pass
    for d in reversed(dirs):
        try:
            os.rmdir(d)
        except OSError:
            pass


tc_finish_update()
del tc_finish_update  # boot.py's code is freed: nothing of it stays on the heap

# Developer mode: arm the resume watch (tcbadge/watch.py) and nothing else, so that a soft
# reset (raw REPL, host sessions) stays quick. The watch brings tracing back after a host
# session that leaves the badge at the REPL (e.g. a bare `mpremote`, whose soft reset in the
# raw REPL runs this file but not main.py), and feeds the watchdog meanwhile. A locked badge
# never returns to the REPL (main.py), so it has no watch.
if not tc_locked:
    try:
        import tcbadge.watch

        tcbadge.watch.start()
    except Exception as e:  # noqa: BLE001 - the REPL must stay reachable whatever happens
        print("boot.py: resume watch not armed:", e)
