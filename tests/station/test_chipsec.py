"""chipsec.read_security on esptool's real loader classes (ESP32ROM, ESP32C3ROM, ESP32S3ROM)
talking SLIP to a fake serial port that answers like the chips' ROM loaders: READ_REG from a
table of recorded eFuse register words, GET_SECURITY_INFO from recorded flags and crypt
counts. Nothing of esptool is patched: its command framing, status bytes, eFuse addresses and
flag decoding are the ones a real chip meets."""

from __future__ import annotations

import struct

import pytest

from tracecode.station import chipsec

esptool_targets = pytest.importorskip("esptool.targets")
from esptool.targets import ESP32C3ROM, ESP32ROM, ESP32S3ROM  # noqa: E402

READ_REG, GET_SECURITY_INFO = 0x0A, 0x14


def slip(pkt: bytes) -> bytes:
    return b"\xc0" + pkt.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


class FakeRomSerial:
    """A pyserial-like port with a chip's ROM loader behind it (only what chipsec asks).

    `regs`: {address: word} for READ_REG (other addresses read 0). `security`: None (the
    ESP32 ROM: GET_SECURITY_INFO is an invalid command), or (flags, crypt_cnt, key_purposes,
    chip_id, api_version). `sdm`: secure download mode (READ_REG refused)."""

    def __init__(self, regs=None, security=None, sdm=False):
        self.regs = dict(regs or {})
        self.security = security
        self.sdm = sdm
        self.rx = bytearray()
        self.requests: list[tuple[int, bytes]] = []
        self.timeout = 3
        self.baudrate = 115200
        self.write_timeout = None
        self.dtr = self.rts = False
        self._frame = None

    # pyserial surface used by esptool
    def write(self, data: bytes) -> int:
        for b in data:
            if b == 0xC0:
                if self._frame:                 # a complete request
                    self._request(bytes(self._frame).replace(b"\xdb\xdc", b"\xc0")
                                  .replace(b"\xdb\xdd", b"\xdb"))
                    self._frame = None
                else:
                    self._frame = bytearray()
            elif self._frame is not None:
                self._frame.append(b)
        return len(data)

    def read(self, n=1) -> bytes:
        out = bytes(self.rx[:n])
        del self.rx[:n]
        return out

    def inWaiting(self) -> int:  # noqa: N802
        return len(self.rx)

    in_waiting = property(inWaiting)

    def flushInput(self) -> None:  # noqa: N802
        self.rx.clear()

    reset_input_buffer = flushInput

    def isOpen(self) -> bool:  # noqa: N802
        return True

    def close(self) -> None:
        pass

    # the ROM
    def _reply(self, op: int, val: int, data: bytes) -> None:
        self.rx += slip(struct.pack("<BBHI", 1, op, len(data), val) + data)

    def _request(self, pkt: bytes) -> None:
        _d, op, size, _chk = struct.unpack("<BBHI", pkt[:8])
        data = pkt[8:8 + size]
        self.requests.append((op, data))
        ok = b"\x00\x00\x00\x00"                # status, error, 2 reserved bytes
        if op == READ_REG:
            if self.sdm:                        # 0x01 0x05: secure download mode refuses it
                self._reply(op, 0, b"\x01\x05\x00\x00")
                return
            (addr,) = struct.unpack("<I", data)
            self._reply(op, self.regs.get(addr, 0), ok)
        elif op == GET_SECURITY_INFO and self.security is not None:
            flags, cnt, purposes, chip_id, api = self.security
            self._reply(op, 0, struct.pack("<IB7BII", flags, cnt, *purposes, chip_id, api) + ok)
        else:                                   # the ROM's "invalid command" answer
            self._reply(op, 0, b"\x01\x05\x00\x00")


def esp32(w0=0, w6=0, rev3=False, **kw):
    base = ESP32ROM.EFUSE_RD_REG_BASE
    regs = {base: w0, base + 4 * 6: w6}
    if rev3:   # chip revision 3: BLK0 word 3 bit 15, word 5 bit 20, APB_CTL_DATE bit 31
        regs[base + 4 * 3] = 1 << 15
        regs[base + 4 * 5] = 1 << 20
        regs[ESP32ROM.APB_CTL_DATE_ADDR] = 1 << ESP32ROM.APB_CTL_DATE_S
    port = FakeRomSerial(regs, **kw)
    return ESP32ROM(port, baud=115200), port


def secinfo(cls, flags=0, cnt=0, sdm=False, regs=None):
    port = FakeRomSerial(regs, security=(flags, cnt, (0,) * 7, cls.IMAGE_CHIP_ID, 0), sdm=sdm)
    return cls(port, baud=115200), port


# ---------------------------------------------------------------------------- ESP32 (eFuses)
def test_esp32_blank_chip_is_open():
    esp, port = esp32()
    s = chipsec.read_security(esp)
    assert s.chip == "esp32" and s.source == "eFuse BLOCK0"
    assert (s.flash_encryption, s.secure_boot, s.download_mode) == (False, False, "open")
    assert s.flash_crypt_cnt == 0 and s.jtag_disabled is False
    assert {op for op, _ in port.requests} == {READ_REG}
    assert len(s.missing()) == 3
    assert "flash encryption off" in s.summary()


def test_esp32_flash_encryption_follows_crypt_count_parity():
    # FLASH_CRYPT_CNT (BLK0 word 0, bits 20..26): on with an odd number of bits programmed
    for cnt, on in [(0b1, True), (0b11, False), (0b111, True), (0x7F, True), (0x3F, False)]:
        esp, _ = esp32(w0=cnt << 20)
        s = chipsec.read_security(esp)
        assert (s.flash_crypt_cnt, s.flash_encryption) == (cnt, on), cnt


def test_esp32_secure_boot_and_download_and_jtag():
    # rev 3 chip, ABS_DONE_1 (secure boot v2), UART_DOWNLOAD_DIS, JTAG_DISABLE, DL encrypt/decrypt off
    esp, _ = esp32(w0=(1 << 20) | (1 << 27), w6=(1 << 5) | (1 << 6) | (1 << 7) | (1 << 8),
                   rev3=True)
    s = chipsec.read_security(esp)
    assert s.flash_encryption and s.secure_boot and s.secure_boot_version == "v2"
    assert s.uart_download_disabled and s.download_mode == "disabled"
    assert s.jtag_disabled and s.dl_encrypt_disabled
    assert s.missing() == []
    # ABS_DONE_1 means nothing before revision 3; ABS_DONE_0 is secure boot v1
    esp, _ = esp32(w6=1 << 5)
    assert chipsec.read_security(esp).secure_boot is False
    esp, _ = esp32(w6=1 << 4)
    s = chipsec.read_security(esp)
    assert s.secure_boot and s.secure_boot_version == "v1"


# ---------------------------------------------------------------------------- S3 / C3 (ROM command)
@pytest.mark.parametrize("cls", [ESP32C3ROM, ESP32S3ROM])
def test_security_info_chips(cls):
    esp, port = secinfo(cls)
    s = chipsec.read_security(esp)
    assert s.source == "GET_SECURITY_INFO" and s.chip == cls.CHIP_NAME.lower().replace("-", "")
    assert (s.flash_encryption, s.secure_boot, s.download_mode) == (False, False, "open")
    assert port.requests[0][0] == GET_SECURITY_INFO
    # flash encryption (SPI_BOOT_CRYPT_CNT 0b001), SECURE_BOOT_EN, SECURE_DOWNLOAD_ENABLE,
    # SOFT_DIS_JTAG: the locked-down chip; register reads are refused in secure download mode
    esp, port = secinfo(cls, flags=(1 << 0) | (1 << 2) | (1 << 6), cnt=0b001, sdm=True)
    s = chipsec.read_security(esp)
    assert s.flash_encryption and s.secure_boot and s.secure_boot_version == "v2"
    assert s.secure_download and s.download_mode == "secure" and s.jtag_disabled
    assert s.missing() == [] and READ_REG not in {op for op, _ in port.requests}
    # 0b011: encryption turned off again (development mode re-flash), 0b111: on for good
    assert not chipsec.read_security(secinfo(cls, cnt=0b011)[0]).flash_encryption
    assert chipsec.read_security(secinfo(cls, cnt=0b111)[0]).flash_encryption


def test_dis_download_manual_encrypt_read_when_not_in_sdm():
    reg = ESP32S3ROM.EFUSE_DIS_DOWNLOAD_MANUAL_ENCRYPT_REG
    esp, _ = secinfo(ESP32S3ROM, cnt=1, regs={reg: ESP32S3ROM.EFUSE_DIS_DOWNLOAD_MANUAL_ENCRYPT})
    s = chipsec.read_security(esp)
    assert s.dl_encrypt_disabled is True and s.secure_download is False


def test_as_dict_is_json():
    import json

    s = chipsec.read_security(esp32(w0=1 << 20)[0])
    d = json.loads(json.dumps(s.as_dict()))
    assert d["flash_encryption"] is True and d["download_mode"] == "open"
