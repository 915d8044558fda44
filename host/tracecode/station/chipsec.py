"""A chip's security state (flash encryption, secure boot, download mode), read with esptool.

`read_security(esp)` takes a connected esptool loader (`esptool.cmds.detect_chip(...)`, the ROM
loader or its stub) and asks the chip the way esptool itself does:

- ESP32-S2 and later (S3, C3, C6, H2, ...): the ROM's GET_SECURITY_INFO command
  (`esp.get_security_info()`): SPI_BOOT_CRYPT_CNT, and the flags SECURE_BOOT_EN,
  SECURE_DOWNLOAD_ENABLE, SOFT_DIS_JTAG / HARD_DIS_JTAG. The command also works in secure
  download mode, where the ROM refuses register reads.
- ESP32: eFuse block 0 through READ_REG (`esp.read_efuse(n)`, the ROM has no GET_SECURITY_INFO):
  FLASH_CRYPT_CNT (word 0, bits 20-26), UART_DOWNLOAD_DIS (word 0, bit 27, chip revision 3
  and later), ABS_DONE_0 / ABS_DONE_1 (word 6, bits 4 / 5: secure boot v1 / v2, v2 on
  revision 3 and later), JTAG_DISABLE (word 6, bit 6), DISABLE_DL_ENCRYPT / DISABLE_DL_DECRYPT
  (word 6, bits 7 / 8).

Flash encryption is on when the crypt counter has an odd number of bits set (each bit
programmed toggles it; the last one, all bits set, leaves it on for good).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ChipSecurity:
    chip: str
    source: str                          # "GET_SECURITY_INFO" | "eFuse BLOCK0"
    flash_crypt_cnt: int
    flash_encryption: bool
    secure_boot: bool
    secure_boot_version: str | None      # "v1" | "v2" | None
    secure_download: bool | None         # ROM secure download mode (S2 and later); None: ESP32
    uart_download_disabled: bool | None  # ESP32 UART_DOWNLOAD_DIS; None where not read
    jtag_disabled: bool | None
    dl_encrypt_disabled: bool | None     # the ROM may not encrypt/decrypt flash for a host
    flags: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def download_mode(self) -> str:
        if self.uart_download_disabled:
            return "disabled"
        if self.secure_download:
            return "secure"
        return "open"

    def summary(self) -> str:
        def yes(v):
            return "?" if v is None else "on" if v else "off"
        sb = ("on (%s)" % self.secure_boot_version) if self.secure_boot else "off"
        return (f"{self.chip}: flash encryption {yes(self.flash_encryption)} "
                f"(crypt count {self.flash_crypt_cnt:#x}), secure boot {sb}, "
                f"download mode {self.download_mode}, JTAG {'disabled' if self.jtag_disabled else 'enabled' if self.jtag_disabled is not None else '?'}")

    def missing(self) -> list[str]:
        """What this chip lacks against a physical attacker with esptool (docs/station.md)."""
        out = []
        if not self.flash_encryption:
            out.append("flash encryption (esptool read_flash returns the file system in clear)")
        if not self.secure_boot:
            out.append("secure boot v2 (any image can be flashed and run)")
        if self.download_mode == "open":
            out.append("secure download mode / UART download disabled")
        return out

    def as_dict(self) -> dict:
        d = asdict(self)
        d["download_mode"] = self.download_mode
        return d


def _chip_key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


def _odd(n: int) -> bool:
    return bin(n).count("1") % 2 == 1


def read_security(esp) -> ChipSecurity:
    """The security state of the chip behind a connected esptool loader (ROM or stub)."""
    chip = _chip_key(getattr(esp, "CHIP_NAME", "?"))
    if getattr(esp, "SECURITY_INFO_SUPPORTED", False):
        si = esp.get_security_info()
        f = si["parsed_flags"]
        cnt = int(si["flash_crypt_cnt"])
        sdm = bool(f["SECURE_DOWNLOAD_ENABLE"]) or bool(getattr(esp, "secure_download_mode", False))
        dl_enc = None
        notes = []
        if not sdm:
            try:   # a register read: refused by the ROM in secure download mode
                dl_enc = bool(esp.get_encrypted_download_disabled())
            except Exception as exc:   # noqa: BLE001 (any loader error: leave it unknown)
                notes.append(f"DIS_DOWNLOAD_MANUAL_ENCRYPT not read ({type(exc).__name__})")
        return ChipSecurity(
            chip=chip, source="GET_SECURITY_INFO", flash_crypt_cnt=cnt,
            flash_encryption=_odd(cnt), secure_boot=bool(f["SECURE_BOOT_EN"]),
            secure_boot_version="v2" if f["SECURE_BOOT_EN"] else None,
            secure_download=sdm, uart_download_disabled=None,
            jtag_disabled=bool(f["SOFT_DIS_JTAG"] or f["HARD_DIS_JTAG"]),
            dl_encrypt_disabled=dl_enc, flags=int(si["flags"]), notes=notes)
    if chip != "esp32":
        raise ValueError(f"reading the security state of {chip} is not supported")
    w0 = esp.read_efuse(0)
    w6 = esp.read_efuse(6)
    cnt = (w0 >> 20) & 0x7F
    v1 = bool(esp.get_secure_boot_v1_enabled())            # ABS_DONE_0
    sb = bool(esp.get_secure_boot_enabled())               # ABS_DONE_0, or ABS_DONE_1 on rev >= 3
    return ChipSecurity(
        chip=chip, source="eFuse BLOCK0", flash_crypt_cnt=cnt,
        flash_encryption=bool(esp.get_flash_encryption_enabled()),
        secure_boot=sb, secure_boot_version=("v1" if v1 else "v2") if sb else None,
        secure_download=None, uart_download_disabled=bool((w0 >> 27) & 1),
        jtag_disabled=bool((w6 >> 6) & 1),
        dl_encrypt_disabled=bool((w6 >> 7) & 1) and bool((w6 >> 8) & 1))
