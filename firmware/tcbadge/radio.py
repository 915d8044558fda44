# Radio layer: aioble when it is installed on the badge, otherwise a minimal driver over
# MicroPython's low-level `bluetooth` API (the same calls aioble makes). The BLE object is
# passed in or created here and owned by this object, never kept in a module global.
#
# The IRQ handler must never raise: MicroPython (extmod/modbluetooth.c) prints the error and
# switches the handler off for the rest of the boot, so one bad sighting (a MemoryError, a
# bug) would end all scanning. `_irq` catches every Exception and counts it (`irq_errors`);
# the handler is registered again at every scan, so even an escaped error costs at most
# that window. Every scan has a deadline (window + grace), with aioble too, so a scan-done
# event that never comes cannot hold the radio lock.
import asyncio
import time

from micropython import const

_IRQ_SCAN_RESULT = const(5)
_IRQ_SCAN_DONE = const(6)
_SCAN_INTERVAL_US = const(30000)
_SCAN_WINDOW_US = const(30000)
_ADDR_NRPA = const(3)
_DONE_GRACE_MS = const(2000)


def _load_aioble():
    try:
        import aioble

        return aioble
    except ImportError:
        return None


class Radio:
    def __init__(self, ble=None, use_aioble=True):
        self.aioble = _load_aioble() if use_aioble else None
        if self.aioble is not None:
            ble = self.aioble.core.ble
        elif ble is None:
            import bluetooth

            ble = bluetooth.BLE()
        self.ble = ble
        self.lock = asyncio.Lock()  # held while scanning and while changing the address
        self._flag = asyncio.ThreadSafeFlag()
        self._agg = None
        self._done = True
        self.adverts_started = 0
        self.addresses = 0
        self._irq_cb = self._irq  # one bound method, registered at start and at each scan
        self.irq_errors = 0  # exceptions caught in the IRQ handler (each cost one event)
        self.scan_timeouts = 0  # scans ended by the deadline, not by the stack's scan-done

    def kind(self):
        return "aioble" if self.aioble is not None else "bluetooth"

    def start(self):
        if not self.ble.active():
            self.ble.active(True)
        if self.aioble is None:
            self.ble.irq(self._irq_cb)

    def _stop_adv(self):
        try:
            self.ble.gap_advertise(None)  # type: ignore  # None stops (the stub says int)
        except OSError:
            pass

    def _stop_scan(self):
        try:
            self.ble.gap_scan(None)  # type: ignore  # None stops (the stub says int)
        except OSError:
            pass  # EALREADY: no scan running

    def stop(self):
        self._stop_adv()
        self._stop_scan()

    def _irq(self, event, data):
        # Runs in the BLE IRQ: fold the sighting into the preallocated table (no allocation;
        # adv_data is only valid during this call), flag the end of the scan, return.
        # Nothing escapes: an exception here would disable the handler (see the top).
        try:
            if event == _IRQ_SCAN_RESULT:
                agg = self._agg
                if agg is not None:
                    agg.feed(data[4], data[3])
            elif event == _IRQ_SCAN_DONE:
                self._done = True
                self._flag.set()
        except Exception:  # noqa: BLE001 - costs this one event; counted, never raised
            self.irq_errors += 1

    def new_address(self):
        # A fresh non-resolvable private address (advertising and scanning must be stopped).
        self.ble.config(addr_mode=_ADDR_NRPA)
        self.addresses += 1

    def address(self):
        try:
            return bytes(self.ble.config("mac")[1])
        except (OSError, ValueError, TypeError, IndexError):
            return b""

    async def advertise(self, adv, interval_us, duration_ms):
        # Advertise adv (non-connectable) for duration_ms, then stop.
        self.adverts_started += 1
        if self.aioble is not None:
            try:
                await self.aioble.advertise(interval_us, adv_data=adv, connectable=False,
                                            timeout_ms=duration_ms)
            except asyncio.TimeoutError:
                pass
            return
        self.ble.gap_advertise(interval_us, adv, connectable=False)
        try:
            await asyncio.sleep_ms(duration_ms)
        finally:
            self._stop_adv()

    async def scan(self, duration_ms, agg):
        # One passive scan window; every sighting is folded into agg as it arrives.
        async with self.lock:
            if self.aioble is not None:
                try:
                    await asyncio.wait_for_ms(self._aioble_scan(duration_ms, agg),
                                              duration_ms + _DONE_GRACE_MS)
                except asyncio.TimeoutError:
                    self.scan_timeouts += 1
                    self._stop_scan()
                return
            self._done = False
            self._flag.clear()
            self._agg = agg
            try:
                self.ble.irq(self._irq_cb)  # again each scan: cheap, and undoes a disabled handler
                try:
                    self.ble.gap_scan(duration_ms, _SCAN_INTERVAL_US, _SCAN_WINDOW_US, False)
                except OSError:
                    # EALREADY: a scan is still running (e.g. left over); stop it, start ours.
                    self._stop_scan()
                    self.ble.gap_scan(duration_ms, _SCAN_INTERVAL_US, _SCAN_WINDOW_US, False)
                # Sleep until the stack's scan-done IRQ (one wake-up per scan); the deadline
                # only matters if that event never comes.
                end = time.ticks_add(time.ticks_ms(), duration_ms + _DONE_GRACE_MS)
                while not self._done:
                    left = time.ticks_diff(end, time.ticks_ms())
                    if left <= 0:
                        break
                    try:
                        await asyncio.wait_for_ms(self._flag.wait(), left)
                    except asyncio.TimeoutError:
                        pass
                if not self._done:
                    self.scan_timeouts += 1
                    self._stop_scan()
            finally:
                self._agg = None

    async def _aioble_scan(self, duration_ms, agg):
        aioble = self.aioble
        if aioble is None:
            return
        async with aioble.scan(duration_ms, _SCAN_INTERVAL_US, _SCAN_WINDOW_US,
                                    active=False) as results:
            async for r in results:
                if r.adv_data:
                    try:
                        agg.feed(r.adv_data, r.rssi)
                    except Exception:  # noqa: BLE001 - same rule as the IRQ path
                        self.irq_errors += 1
