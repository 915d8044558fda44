"""Simulated MicroPython modules: semantics of the ESP32 port, run as badge code."""
import errno

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sim_helpers import raw_transport, write_flash
from mpremote.transport import TransportExecError


@pytest.fixture
def badge(fleet):
    b = fleet.add_badge("m")
    b.power_on()
    t = raw_transport(b)
    yield b, t
    t.close()


def run(t, code):
    return t.exec(code).decode().strip()


def err(t, code):
    with pytest.raises(TransportExecError) as ei:
        t.exec(code)
    return ei.value.error_output.strip().splitlines()[-1]


def test_cryptolib_ecb_cbc_and_ctr_raises(badge):
    b, t = badge
    key = bytes(range(16))
    block = b"EN-RPI" + bytes(6) + (2650847).to_bytes(4, "little")
    got = t.eval("__import__('cryptolib').aes(%r, 1).encrypt(%r)" % (key, block))
    ref = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(block)
    assert got == ref
    iv = bytes(16)
    got = t.eval("__import__('cryptolib').aes(%r, 2, %r).encrypt(%r)" % (key, iv, block * 2))
    assert got == Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor().update(block * 2)
    assert err(t, "import cryptolib\ncryptolib.aes(bytes(16), 6, bytes(16))") == "ValueError: mode"
    assert err(t, "import cryptolib\ncryptolib.aes(bytes(16), 1).encrypt(b'x')").startswith("ValueError")


def test_time_epoch_2000_and_clock_never_set(badge, fleet):
    b, t = badge
    assert t.eval("__import__('time').gmtime(0)[0]") == 2000
    # never set: the badge believes it is early 2000-01-01
    assert t.eval("__import__('time').time()") < 60
    b.set_clock()
    unix = fleet.unix_time()
    now2000 = t.eval("__import__('time').time()")
    assert abs(now2000 + 946684800 - unix) <= 1
    # RTC.datetime round trip, weekday 0 = Monday (2024-03-04 was a Monday)
    run(t, "import machine\nmachine.RTC().datetime((2024, 3, 4, 0, 12, 0, 0, 0))")
    assert t.eval("__import__('machine').RTC().datetime()")[:7] == (2024, 3, 4, 0, 12, 0, 0)
    assert t.eval("__import__('time').mktime((2000, 1, 2, 0, 0, 0, 0, 0))") == 86400


def test_ticks_wrap_and_sleep_virtual(badge, fleet):
    b, t = badge
    assert t.eval("__import__('time').ticks_diff(5, (1 << 30) - 5)") == 10
    assert t.eval("__import__('time').ticks_add((1 << 30) - 1, 2)") == 1
    before = fleet.now
    out = run(t, "import time\nt=time.ticks_ms()\ntime.sleep_ms(1500)\nprint(time.ticks_diff(time.ticks_ms(), t))")
    assert out == "1500"
    assert fleet.now - before >= 1.5


def test_hashlib_has_no_copy_nor_hexdigest(badge):
    b, t = badge
    assert t.eval("__import__('hashlib').sha256(b'abc').digest()") == bytes.fromhex(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    assert "AttributeError" in err(t, "import hashlib\nhashlib.sha256().copy()")
    assert "AttributeError" in err(t, "import hashlib\nhashlib.sha256().hexdigest()")


def test_flash_full_raises_enospc(badge):
    b, t = badge
    b.flash.set_free(8192)
    line = err(t, "f=open('big.bin','wb')\nfor i in range(10):\n f.write(bytes(4096))")
    assert line == "OSError: [Errno 28] ENOSPC"
    assert t.eval("__import__('os').statvfs('/')[3]") == 0


def test_os_extras(badge):
    b, t = badge
    run(t, "import os\nos.mkdir('d')\nf=open('d/a','w')\nf.write('xyz')\nf.close()\nos.rename('d/a','d/b')")
    assert t.eval("list(__import__('os').ilistdir('d'))") == [("b", 0x8000, 0, 3)]
    assert t.eval("__import__('os').stat('d/b')[6]") == 3
    assert err(t, "import os\nos.rmdir('d')") == "OSError: [Errno 39] ENOTEMPTY"
    assert err(t, "import os\nos.remove('nope')") == "OSError: [Errno 2] ENOENT"
    assert len(t.eval("__import__('os').urandom(16)")) == 16
    assert t.eval("__import__('os').uname().sysname") == "esp32"


def test_nvs_needs_commit(badge, fleet):
    b, t = badge
    run(t, "import esp32\nn=esp32.NVS('tc')\nn.set_i32('a', 5)\nn.commit()\nn.set_i32('b', 7)")
    assert t.eval("n.get_i32('b')") == 7
    t.close()
    b.power_cut()
    b.power_on()
    t2 = raw_transport(b)
    try:
        assert t2.eval("__import__('esp32').NVS('tc').get_i32('a')") == 5
        line = err(t2, "import esp32\nesp32.NVS('tc').get_i32('b')")
        assert "ESP_ERR_NVS_NOT_FOUND" in line
    finally:
        t2.close()


def test_ble_api_limits(badge):
    b, t = badge
    assert "EPERM" in err(t, "import bluetooth\nbluetooth.BLE().gap_advertise(100000, b'x')")
    run(t, "import bluetooth\nble=bluetooth.BLE()\nble.active(True)")
    assert "EINVAL" in err(t, "ble.gap_advertise(100000, bytes(32))")
    run(t, "ble.config(addr_mode=3)\na1=ble.config('mac')\nble.config(addr_mode=3)\na2=ble.config('mac')")
    assert t.eval("a1 != a2 and a1[0] == 1 and len(a1[1]) == 6")
    assert "ValueError" in err(t, "ble.config('nope')")
    # stop advertising with None, stop a scan and get SCAN_DONE
    run(t, "ble.gap_advertise(250000, b'\\x02\\x01\\x1a', connectable=False)\nble.gap_advertise(None)")
    out = run(t, "import time\nev=[]\nble.irq(lambda e, d: ev.append(e))\nble.gap_scan(0, 30000, 30000)\n"
                 "time.sleep_ms(100)\nble.gap_scan(None)\ntime.sleep_ms(1)\nprint(ev)")
    assert out == "[6]"


def test_per_badge_isolation(fleet):
    a = fleet.add_badge("iso-a")
    b = fleet.add_badge("iso-b")
    for x in (a, b):
        write_flash(x, "lib/shared.py", "state = []\n")
    a.power_on()
    b.power_on()
    ta, tb = raw_transport(a), raw_transport(b)
    try:
        run(ta, "import shared, bluetooth\nshared.state.append('a')\nbluetooth.BLE().active(True)")
        assert tb.eval("__import__('shared').state") == []
        assert tb.eval("__import__('bluetooth').BLE().active()") is False
        assert ta.eval("__import__('machine').unique_id()") != tb.eval("__import__('machine').unique_id()")
        assert ta.eval("__import__('os').urandom(8)") != tb.eval("__import__('os').urandom(8)")
        # the host process' own modules are untouched
        import sys
        assert "shared" not in sys.modules and "bluetooth" not in sys.modules
    finally:
        ta.close()
        tb.close()


def test_button_press_while_host_code_waits(badge, fleet):
    b, t = badge
    b.press_button(after=2.0, duration=0.5)
    out = run(t, "import machine, time\np=machine.Pin(0, machine.Pin.IN, machine.Pin.PULL_UP)\n"
                 "n=0\nwhile p.value() and n < 500:\n time.sleep_ms(20)\n n+=1\nprint(n)")
    assert 95 <= int(out) <= 105          # ~2 s of 20 ms polls
    assert t.eval("p.value()") == 0 or fleet.now >= 0


def test_asyncio_semantics(badge):
    b, t = badge
    code = """
import asyncio, time
log = []
async def slow():
    try:
        await asyncio.sleep_ms(1000)
    except asyncio.CancelledError:
        log.append('cancelled')
        raise
async def main():
    try:
        await asyncio.wait_for_ms(slow(), 100)
    except asyncio.TimeoutError:
        log.append('timeout')
    async def nap(ms):
        await asyncio.sleep_ms(ms)
        return ms
    r = await asyncio.gather(nap(10), nap(20))
    log.append(len(r))
    ev = asyncio.Event()
    async def setter():
        await asyncio.sleep_ms(5)
        ev.set()
    asyncio.create_task(setter())
    await ev.wait()
    log.append('event')
    lock = asyncio.Lock()
    async with lock:
        log.append(lock.locked())
    log.append(asyncio.current_task() is not None)
    t0 = time.ticks_ms()
    await asyncio.sleep(2)
    log.append(time.ticks_diff(time.ticks_ms(), t0))
asyncio.run(main())
print(log)
"""
    out = run(t, code)
    assert out == "['cancelled', 'timeout', 2, 'event', True, True, 2000]"
    assert t.eval("issubclass(__import__('asyncio').CancelledError, Exception)") is False
    assert t.eval("__import__('uasyncio') is __import__('asyncio')") is True


def test_pin_irq_neopixel_adc(badge, fleet):
    b, t = badge
    run(t, "import machine, neopixel\nhits = []\np = machine.Pin(0, machine.Pin.IN, machine.Pin.PULL_UP)\n"
           "p.irq(lambda pin: hits.append(pin.value()), trigger=machine.Pin.IRQ_FALLING)\n"
           "np = neopixel.NeoPixel(machine.Pin(27), 1)\nnp[0] = (10, 20, 30)\nnp.write()\n"
           "led = machine.Pin(2, machine.Pin.OUT)\nled.on()")
    assert b.led() == {"neopixel": {27: [(10, 20, 30)]}, "pins": {2: 1}}
    b.press_button(after=0.5, duration=0.2)
    assert run(t, "import time\ntime.sleep(1)\nprint(hits)") == "[0]"
    b.battery_v = 3.7
    uv = t.eval("__import__('machine').ADC(__import__('machine').Pin(35), atten=3).read_uv()")
    assert uv == 1850000           # 3.7 V through the default 1:2 divider
