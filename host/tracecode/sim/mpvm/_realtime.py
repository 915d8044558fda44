# wall clock of the host machine (only for realtime fleets)
import sys
_p = sys.path
sys.path = []
try:
    import time as _t
finally:
    sys.path = _p


def ms():
    return _t.ticks_ms()
