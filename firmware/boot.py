# TraceCode badge boot: nothing to do before main.py. Kept small on purpose so that a
# soft reset (raw REPL, host sessions) is quick.
