# CPython stand-in for MicroPython's `micropython` module (unit tests only).
def const(x):
    return x
