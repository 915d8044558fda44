"""The esptool step: checked against a recorded fake of esptool 5's Python API (no chip
exists here), plus `tracecode flash --dry-run` through the real CLI."""

import inspect
import json
import struct

import pytest

from tracecode.cli import main
from tracecode.errors import DeviceError, InputError
from tracecode.station import flasher
from tracecode.station.ports import BadgePort

CHIP_IDS = {"esp32": 0, "esp32c3": 5, "esp32s3": 9}


def make_image(path, chip="esp32", size=4096):
    """An ESP application image header (magic 0xE9, extended header chip id at byte 12)."""
    head = bytes([0xE9, 3, 2, 0x20]) + struct.pack("<I", 0x40080000)
    ext = bytes([0xEE, 0, 0, 0]) + struct.pack("<H", CHIP_IDS[chip]) + bytes(10)
    path.write_bytes(head + ext + bytes(size - len(head) - len(ext)))
    return path


@pytest.fixture
def boards(tmp_path):
    d = tmp_path / "boards"
    d.mkdir()
    (d / "devkit.json").write_text(json.dumps(
        {"name": "devkit", "chip": "esp32", "flash_offset": "0x1000",
         "button": {"pin": 0, "active": 0}}))
    (d / "c3.json").write_text(json.dumps({"name": "c3", "chip": "esp32c3", "flash_offset": 0}))
    return d


@pytest.fixture
def firmware(tmp_path):
    d = tmp_path / "fw"
    (d / "tcbadge").mkdir(parents=True)
    (d / "main.py").write_text("import tcbadge\n")
    (d / "boot.py").write_text("")
    (d / "tcbadge" / "__init__.py").write_text("VERSION = '0'\n")
    (d / "manifest.py").write_text("package('tcbadge')\n")
    return d


class FakeESP:
    def __init__(self, chip):
        self.CHIP_NAME = chip


class RecordedEsptool:
    """Records calls in the order and with the arguments of esptool.cmds' functions."""

    def __init__(self, chip="ESP32", fail_detect=None):
        self.calls = []
        self.chip = chip
        self.fail_detect = fail_detect

    def detect_chip(self, port, baud=115200, connect_mode="default-reset",
                    trace_enabled=False, connect_attempts=7):
        self.calls.append(("detect_chip", port, baud, connect_attempts))
        if self.fail_detect:
            raise self.fail_detect
        return FakeESP(self.chip)

    def run_stub(self, esp, plugins=None):
        self.calls.append(("run_stub", esp.CHIP_NAME))
        return esp

    def attach_flash(self, esp, spi_connection=None):
        self.calls.append(("attach_flash",))

    def erase_flash(self, esp, force=False, flash_type="nor"):
        self.calls.append(("erase_flash",))

    def write_flash(self, esp, addr_data, flash_freq="keep", flash_mode="keep",
                    flash_size="keep", flash_type="nor", **kw):
        self.calls.append(("write_flash", addr_data))

    def verify_flash(self, esp, addr_data, flash_freq="keep", flash_mode="keep",
                     flash_size="keep", diff=False, flash_type="nor"):
        self.calls.append(("verify_flash", addr_data))

    def reset_chip(self, esp, reset_mode="hard-reset"):
        self.calls.append(("reset_chip", reset_mode))


def test_fake_matches_real_esptool_api():
    """Every call we make exists in the installed esptool with the parameters we pass."""
    import esptool.cmds as real

    used = {"detect_chip": {"port", "baud", "connect_attempts"}, "run_stub": {"esp"},
            "attach_flash": {"esp"}, "erase_flash": {"esp"},
            "write_flash": {"esp", "addr_data"}, "verify_flash": {"esp", "addr_data"},
            "reset_chip": {"esp", "reset_mode"}}
    for name, params in used.items():
        sig = inspect.signature(getattr(real, name))
        assert params <= set(sig.parameters), (name, sig)
    assert "hard-reset" in inspect.getsource(real.reset_chip)


def opts(boards, firmware, api, **kw):
    return flasher.FlashOptions(board=flasher.Board.load("devkit", boards),
                                firmware_dir=firmware, esptool_api=api, **kw)


def run_esptool(steps):
    for s in steps:
        if s.run:
            s.run()


def test_esptool_calls(tmp_path, boards, firmware, monkeypatch):
    monkeypatch.setattr(flasher.time, "sleep", lambda s: None)
    image = make_image(tmp_path / "mp.bin")
    api = RecordedEsptool("ESP32")
    steps = flasher.esptool_steps(BadgePort("/dev/ttyUSB0"), opts(boards, firmware, api, image=image))
    run_esptool(steps)
    assert [c[0] for c in api.calls] == ["detect_chip", "run_stub", "attach_flash",
                                         "erase_flash", "write_flash", "verify_flash",
                                         "reset_chip"]
    assert api.calls[0][1] == "/dev/ttyUSB0"
    assert api.calls[4] == ("write_flash", [(0x1000, str(image))])
    assert api.calls[5] == ("verify_flash", [(0x1000, str(image))])
    assert api.calls[6] == ("reset_chip", "hard-reset")


def test_esptool_no_erase_c3_offset(tmp_path, boards, firmware, monkeypatch):
    monkeypatch.setattr(flasher.time, "sleep", lambda s: None)
    image = make_image(tmp_path / "c3.bin", chip="esp32c3")
    api = RecordedEsptool("ESP32-C3")
    o = flasher.FlashOptions(board=flasher.Board.load("c3", boards), image=image, erase=False,
                             firmware_dir=firmware, esptool_api=api)
    run_esptool(flasher.esptool_steps(BadgePort("/dev/ttyACM0"), o))
    assert "erase_flash" not in [c[0] for c in api.calls]
    assert ("write_flash", [(0x0, str(image))]) in api.calls


def test_wrong_chip_answers(tmp_path, boards, firmware):
    api = RecordedEsptool("ESP32-S3")
    steps = flasher.esptool_steps(BadgePort("/dev/ttyUSB0"),
                                  opts(boards, firmware, api, image=make_image(tmp_path / "a.bin")))
    with pytest.raises(DeviceError, match="wrong chip"):
        run_esptool(steps)
    assert [c[0] for c in api.calls] == ["detect_chip"]   # nothing written


def test_no_chip_answers(tmp_path, boards, firmware):
    from esptool.util import FatalError

    api = RecordedEsptool(fail_detect=FatalError("Failed to connect to Espressif device: "
                                                 "No serial data received."))
    steps = flasher.esptool_steps(BadgePort("/dev/ttyUSB0"),
                                  opts(boards, firmware, api, image=make_image(tmp_path / "a.bin")))
    with pytest.raises(DeviceError, match="no chip answers"):
        run_esptool(steps)


def test_image_missing_and_image_for_other_chip(tmp_path, boards, firmware):
    api = RecordedEsptool()
    with pytest.raises(InputError, match="image file missing"):
        flasher.esptool_steps(BadgePort("/dev/ttyUSB0"),
                              opts(boards, firmware, api, image=tmp_path / "nope.bin"))
    s3 = make_image(tmp_path / "s3.bin", chip="esp32s3")
    with pytest.raises(InputError, match="wrong chip for the image"):
        flasher.esptool_steps(BadgePort("/dev/ttyUSB0"), opts(boards, firmware, api, image=s3))
    assert api.calls == []


def test_virtual_port_skips_image(boards, firmware):
    steps = flasher.esptool_steps(BadgePort("socket://127.0.0.1:9"), opts(boards, firmware, None))
    assert len(steps) == 1 and steps[0].run is None and "virtual badge" in steps[0].text


def test_dry_run_prints_every_step(tmp_path, boards, firmware, capsys):
    image = make_image(tmp_path / "mp.bin")
    db = tmp_path / "st.sqlite"
    rc = main(["flash", "--board", "devkit", "--boards-dir", str(boards), "--firmware-dir",
               str(firmware), "--image", str(image), "--port", "/dev/ttyUSB7", "--db", str(db),
               "--dry-run", "--config", "scan_every_s=60"])
    out = capsys.readouterr().out
    assert rc == 0
    for text in ("detect chip on /dev/ttyUSB7", "erase flash", "at 0x1000", "verify",
                 "hard reset", "-> /main.py", "-> /tcbadge/__init__.py", "mip install aioble",
                 "provision: id=", '"scan_every_s": 60', "soft reset"):
        assert text in out, text
    assert "manifest.py" not in out
    assert not db.exists()          # a dry run touches nothing


def test_dry_run_errors_are_one_line(tmp_path, boards, firmware, capsys):
    rc = main(["flash", "--board", "devkit", "--boards-dir", str(boards), "--firmware-dir",
               str(firmware), "--image", str(tmp_path / "missing.bin"), "--port", "/dev/ttyUSB7",
               "--db", str(tmp_path / "x.sqlite"), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "image file missing" in err
    rc = main(["flash", "--board", "nosuch", "--boards-dir", str(boards), "--skip-image",
               "--port", "socket://127.0.0.1:1", "--dry-run"])
    assert rc == 2 and "unknown board" in capsys.readouterr().err
