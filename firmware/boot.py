# TraceCode badge boot: arm the resume watch (tcbadge/watch.py) and nothing else, so that a
# soft reset (raw REPL, host sessions) stays quick. The watch brings tracing back after a
# host session that leaves the badge at the REPL (e.g. a bare `mpremote`, whose soft reset
# in the raw REPL runs this file but not main.py), and feeds the watchdog meanwhile.
try:
    import tcbadge.watch

    tcbadge.watch.start()
except Exception as e:  # noqa: BLE001 - the REPL must stay reachable whatever happens
    print("boot.py: resume watch not armed:", e)
