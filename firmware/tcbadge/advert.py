# The 31-byte Exposure Notification advertisement and the receiver's filter for it.
from micropython import const

_AD_FLAGS = const(0x01)
_AD_UUID16 = const(0x03)
_AD_SVC_DATA16 = const(0x16)
ADV_LEN = const(31)

_HEAD = b"\x02\x01\x1a\x03\x03\x6f\xfd\x17\x16\x6f\xfd"


def build(rpi, aem, out=None):
    # Flags (LE general discoverable + no BR/EDR), the 0xFD6F UUID, then RPI + AEM as service data.
    if out is None:
        out = bytearray(ADV_LEN)
    out[0:11] = _HEAD
    out[11:27] = rpi
    out[27:31] = aem
    return out


def find_en(adv):
    # Offset of the 20 bytes (RPI + AEM) of a 0xFD6F service-data field of exactly 20
    # bytes, or -1. Walks the AD structures; allocation-free, so it is safe in an IRQ.
    n = len(adv)
    i = 0
    while i + 1 < n:
        ln = adv[i]
        if ln == 0:
            break
        if i + 1 + ln > n:
            return -1
        if adv[i + 1] == _AD_SVC_DATA16 and ln == 23 and adv[i + 2] == 0x6F and adv[i + 3] == 0xFD:
            return i + 4
        i += 1 + ln
    return -1
