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


def _chipsec_fakes():
    """The fake ROM serial port of test_chipsec.py (esptool's real loader classes on it)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "tc_chipsec_fakes", Path(__file__).with_name("test_chipsec.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FAKES = _chipsec_fakes()


def real_loader(chip, encrypted=False):
    """esptool's own ESP32ROM / ESP32C3ROM / ESP32S3ROM on a fake ROM serial port."""
    if chip == "ESP32":
        return FAKES.esp32(w0=(1 << 20) if encrypted else 0)[0]
    from esptool.targets import ESP32C3ROM, ESP32S3ROM
    cls = {"ESP32-C3": ESP32C3ROM, "ESP32-S3": ESP32S3ROM}[chip]
    return FAKES.secinfo(cls, cnt=1 if encrypted else 0)[0]


class RecordedEsptool:
    """Records calls in the order and with the arguments of esptool.cmds' functions; the chip
    it "detects" is esptool's real loader class for that chip on a fake ROM serial port."""

    def __init__(self, chip="ESP32", fail_detect=None, encrypted=False):
        self.calls = []
        self.chip = chip
        self.fail_detect = fail_detect
        self.encrypted = encrypted

    def detect_chip(self, port, baud=115200, connect_mode="default-reset",
                    trace_enabled=False, connect_attempts=7):
        self.calls.append(("detect_chip", port, baud, connect_attempts))
        if self.fail_detect:
            raise self.fail_detect
        return real_loader(self.chip, self.encrypted)

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
    kw.setdefault("log", lambda s: None)
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
                             firmware_dir=firmware, esptool_api=api, log=lambda s: None)
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


# ---------------------------------------------------------------------------- chip security
def test_security_state_is_read_and_printed(tmp_path, boards, firmware, monkeypatch):
    monkeypatch.setattr(flasher.time, "sleep", lambda s: None)
    said = []
    api = RecordedEsptool("ESP32")
    o = opts(boards, firmware, api, image=make_image(tmp_path / "mp.bin"), log=said.append)
    run_esptool(flasher.esptool_steps(BadgePort("/dev/ttyUSB0"), o))
    assert "write_flash" in [c[0] for c in api.calls]       # an open chip is flashed
    assert any("flash encryption off" in s and "download mode open" in s for s in said), said
    assert any("warning: no flash encryption" in s for s in said)
    assert o.security["/dev/ttyUSB0"]["flash_encryption"] is False


def test_require_secure_refuses_a_chip_without_flash_encryption(tmp_path, boards, firmware):
    for chip, board in (("ESP32", "devkit"), ("ESP32-C3", "c3")):
        api = RecordedEsptool(chip)
        image = make_image(tmp_path / f"{board}.bin", chip=flasher.chip_key(chip))
        o = flasher.FlashOptions(board=flasher.Board.load(board, boards), image=image,
                                 firmware_dir=firmware, esptool_api=api, require_secure=True,
                                 log=lambda s: None)
        steps = flasher.esptool_steps(BadgePort("/dev/ttyUSB0"), o)
        assert "refuse it without flash encryption" in steps[0].text
        with pytest.raises(DeviceError, match="no flash encryption.*--require-secure.*nothing written"):
            run_esptool(steps)
        assert [c[0] for c in api.calls] == ["detect_chip"]   # no stub, no erase, no write


def test_require_secure_flashes_an_encrypted_chip(tmp_path, boards, firmware, monkeypatch):
    monkeypatch.setattr(flasher.time, "sleep", lambda s: None)
    api = RecordedEsptool("ESP32", encrypted=True)
    o = opts(boards, firmware, api, image=make_image(tmp_path / "mp.bin"), require_secure=True)
    run_esptool(flasher.esptool_steps(BadgePort("/dev/ttyUSB0"), o))
    assert "write_flash" in [c[0] for c in api.calls]


def test_require_secure_with_skip_image_reads_the_chip_first(boards, firmware, monkeypatch):
    monkeypatch.setattr(flasher.time, "sleep", lambda s: None)
    api = RecordedEsptool("ESP32")
    steps = flasher.esptool_steps(BadgePort("/dev/ttyUSB0"),
                                  opts(boards, firmware, api, skip_image=True, require_secure=True))
    assert len(steps) == 1 and "security state" in steps[0].text
    with pytest.raises(DeviceError, match="no flash encryption"):
        run_esptool(steps)
    api = RecordedEsptool("ESP32", encrypted=True)
    run_esptool(flasher.esptool_steps(BadgePort("/dev/ttyUSB0"),
                                      opts(boards, firmware, api, skip_image=True,
                                           require_secure=True)))
    assert [c[0] for c in api.calls] == ["detect_chip", "reset_chip"]
    # a virtual badge has no flash encryption at all
    with pytest.raises(DeviceError, match="virtual badge has no flash encryption"):
        flasher.esptool_steps(BadgePort("socket://127.0.0.1:9"),
                              opts(boards, firmware, None, require_secure=True))


# ---------------------------------------------------------------------------- provisioning
class _FakeLink:
    def __init__(self):
        self.docs = []

    def probe(self):
        return {"id": "tc-0001", "provisioned": False, "fw": "0"}

    def provision(self, doc):
        self.docs.append(doc)

    def close(self):
        pass


@pytest.mark.parametrize("lock", [True, False])
def test_provisioning_document_locks_by_default(tmp_path, boards, firmware, lock):
    from tracecode.station.db import Database

    link = _FakeLink()
    kw = {} if lock else {"lock": False}
    o = opts(boards, firmware, None, skip_image=True, **kw)
    with Database(tmp_path / "st.sqlite") as db:
        steps = flasher.provision_steps(BadgePort("socket://127.0.0.1:9"), o, db,
                                        {"link": link}, now=lambda: 1_700_000_000)
        assert ("locked" if lock else "unlocked (developer mode") in steps[0].text
        steps[0].run()
    (doc,) = link.docs
    assert doc["lock"] is lock and doc["id"] == "tc-0001" and doc["time"] == 1_700_000_000
