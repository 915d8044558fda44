# Virtual badge `esp32` (runs inside the MicroPython VM): NVS kept by the host; changes
# survive a power cut only after commit().
import _vmcore as _vm
import struct

_NOT_FOUND = const(-4354)


class NVS:
    def __init__(self, namespace):
        if not isinstance(namespace, str) or not 0 < len(namespace) <= 15:
            raise ValueError("invalid namespace")
        self._ns = namespace

    def _get(self, key):
        v = _vm.call(["nvs_get", self._ns, key])
        if v is None:
            raise OSError(_NOT_FOUND, "ESP_ERR_NVS_NOT_FOUND")
        return v

    def set_i32(self, key, value):
        _vm.call(["nvs_set", self._ns, key, ["i", int(value)]])

    def get_i32(self, key):
        v = self._get(key)
        if v[0] != "i":
            raise OSError(-4355, "ESP_ERR_NVS_TYPE_MISMATCH")
        return v[1]

    def set_blob(self, key, value):
        _vm.call(["nvs_set", self._ns, key, ["b", bytes(value).hex()]])

    def get_blob(self, key, buf):
        v = self._get(key)
        if v[0] != "b":
            raise OSError(-4355, "ESP_ERR_NVS_TYPE_MISMATCH")
        b = bytes.fromhex(v[1])
        if len(b) > len(buf):
            raise OSError(-4364, "ESP_ERR_NVS_INVALID_LENGTH")
        buf[0:len(b)] = b
        return len(b)

    def erase_key(self, key):
        self._get(key)
        _vm.call(["nvs_set", self._ns, key, None])

    def commit(self):
        _vm.call(["nvs_commit", self._ns])


HEAP_DATA = const(4)
HEAP_EXEC = const(1)


def raw_temperature():
    return 120


def mcu_temperature():
    return 45


def idf_heap_info(caps):
    return []


def wake_on_ext0(pin, level):
    pass
