"""`tracecode flash`: MicroPython image (esptool), firmware files (mpremote), provisioning.

Each job is a list of `Step`s built first and then run, so `--dry-run` prints exactly what a
real run would do. The esptool part calls esptool 5's public Python API (`esptool.cmds`:
detect_chip, run_stub, attach_flash, erase_flash, write_flash, verify_flash, reset_chip);
`esptool_api` is injectable so the calls can be checked without a chip.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import DeviceError, InputError
from .db import Database
from .link import BadgeLink, BadgeRefused
from .ports import BadgePort

REPO_ROOT = __import__("tracecode.resources").resources.data_root()
DEFAULT_FIRMWARE_DIR = REPO_ROOT / "firmware"
DEFAULT_BOARDS_DIR = REPO_ROOT / "boards"

# Chip id in byte 12-13 of an ESP image's extended header (ESP-IDF esp_chip_id_t).
IMAGE_CHIP_IDS = {0: "esp32", 2: "esp32s2", 5: "esp32c3", 9: "esp32s3", 12: "esp32c2",
                  13: "esp32c6", 16: "esp32h2"}
ESP_IMAGE_MAGIC = 0xE9
# Files of firmware/ that are not copied to the badge (freezing manifest, caches).
SKIP_NAMES = {"manifest.py", "__pycache__", ".pyright", "pyrightconfig.json", "README.md"}


def chip_key(name: str) -> str:
    """'ESP32-C3' / 'esp32c3' / 'esp32-c3' -> 'esp32c3'."""
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


@dataclass
class Board:
    name: str
    chip: str
    flash_offset: int
    profile: dict

    @classmethod
    def load(cls, name: str, boards_dir: Path = DEFAULT_BOARDS_DIR) -> "Board":
        path = Path(name) if name.endswith(".json") else Path(boards_dir) / f"{name}.json"
        try:
            profile = json.loads(path.read_text())
        except FileNotFoundError:
            known = sorted(p.stem for p in Path(boards_dir).glob("*.json"))
            raise InputError(f"unknown board {name!r}",
                             hint="known: " + (", ".join(known) or "none in " + str(boards_dir)))
        except ValueError as exc:
            raise InputError(f"board profile {path} is not valid JSON ({exc})") from None
        try:
            chip = chip_key(str(profile["chip"]))
            off = profile.get("flash_offset", 0x1000 if chip in ("esp32", "esp32s2") else 0)
            off = int(off, 0) if isinstance(off, str) else int(off)
        except (KeyError, ValueError, TypeError):
            raise InputError(f"board profile {path} lacks a valid chip / flash_offset") from None
        return cls(profile.get("name", path.stem), chip, off, profile)


def image_chip(path: Path) -> str | None:
    """The chip an ESP image is built for (from its header), or None if unknown."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 16 or head[0] != ESP_IMAGE_MAGIC:
        return None
    return IMAGE_CHIP_IDS.get(struct.unpack_from("<H", head, 12)[0])


@dataclass
class Step:
    kind: str           # "esptool" | "install" | "aioble" | "provision" | "session"
    text: str
    run: Callable[[], None] | None = None


@dataclass
class FlashOptions:
    board: Board
    image: Path | None = None
    erase: bool = True
    skip_image: bool = False
    firmware_dir: Path = DEFAULT_FIRMWARE_DIR
    aioble_dir: Path | None = None
    aioble_mip: bool = True
    badge_id: str | None = None
    config: dict = field(default_factory=dict)
    reprovision: bool = False
    lock: bool = True                         # provision a locked badge; False: developer mode
    require_secure: bool = False              # refuse a chip without flash encryption
    baud: int = 460800
    esptool_api: object | None = None
    now: Callable[[], float] = time.time     # host clock given to the badge
    log: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr))
    security: dict = field(default_factory=dict)   # port -> chip security state read


# ---------------------------------------------------------------------------- esptool
def esptool_steps(port: BadgePort, opts: FlashOptions) -> list[Step]:
    """Erase + write + verify the MicroPython image with esptool's Python API."""
    if port.is_virtual and opts.require_secure:
        raise DeviceError(f"{port.device}: a virtual badge has no flash encryption: "
                          "--require-secure refuses it, nothing written")
    if opts.skip_image:
        return [security_step(port, opts)] if opts.require_secure else []
    if port.is_virtual:
        return [Step("esptool", f"skip image on {port.device}: a virtual badge has no ROM "
                                "bootloader (install and provision only)")]
    if opts.image is None:
        raise InputError("no MicroPython image given", hint="pass --image FILE or --skip-image")
    image = Path(opts.image)
    if not image.is_file():
        raise InputError(f"image file missing: {image}")
    built_for = image_chip(image)
    if built_for is not None and built_for != opts.board.chip:
        raise InputError(f"wrong chip for the image: {image.name} is built for {built_for}, "
                         f"board {opts.board.name} is {opts.board.chip}")
    off = opts.board.flash_offset
    state: dict = {}

    def api():
        if opts.esptool_api is None:
            import esptool.cmds as cmds
            opts.esptool_api = cmds
        return opts.esptool_api

    def connect():
        try:
            esp = api().detect_chip(port.device, baud=115200, connect_attempts=3)
        except Exception as exc:
            raise DeviceError(f"{port.device}: no chip answers ({_short(exc)})",
                              hint="hold BOOT while pressing EN/RESET, or check the cable") from None
        found = chip_key(getattr(esp, "CHIP_NAME", "?"))
        if found != opts.board.chip:
            _safe_close(esp)
            raise DeviceError(f"{port.device}: wrong chip for the image: found {found}, "
                              f"board {opts.board.name} needs {opts.board.chip}")
        check_security(port, opts, esp, state)
        if getattr(esp, "secure_download_mode", False):
            state["esp"] = esp   # the ROM in secure download mode runs no stub
        else:
            state["esp"] = api().run_stub(esp)
        if opts.baud and opts.baud != 115200 and hasattr(state["esp"], "change_baud"):
            state["esp"].change_baud(opts.baud)
        api().attach_flash(state["esp"])

    def guarded(fn):
        def run():
            try:
                fn()
            except DeviceError:
                raise
            except Exception as exc:
                _safe_close(state.get("esp"))
                raise DeviceError(f"{port.device}: esptool failed ({_short(exc)})") from None
        return run

    def close():
        esp = state.pop("esp")
        api().reset_chip(esp, "hard-reset")
        _safe_close(esp)
        time.sleep(1.5)   # MicroPython's first boot creates its file system

    steps = [Step("esptool", f"detect chip on {port.device} (expect {opts.board.chip}), "
                             f"read its security state (flash encryption, secure boot, "
                             f"download mode{'; refuse it without flash encryption' if opts.require_secure else ''}), "
                             f"load stub, attach flash", connect)]
    if opts.erase:
        steps.append(Step("esptool", "erase flash",
                          guarded(lambda: api().erase_flash(state["esp"]))))
    size = image.stat().st_size
    steps.append(Step("esptool", f"write {image} ({size} bytes) at {off:#x}",
                      guarded(lambda: api().write_flash(state["esp"], [(off, str(image))]))))
    steps.append(Step("esptool", f"verify {size} bytes at {off:#x}",
                      guarded(lambda: api().verify_flash(state["esp"], [(off, str(image))]))))
    steps.append(Step("esptool", "hard reset into MicroPython", guarded(close)))
    return steps


def check_security(port: BadgePort, opts: FlashOptions, esp, state: dict) -> None:
    """Read the chip's security state (chipsec), print it, and with --require-secure refuse a
    chip without flash encryption before anything is written."""
    from .chipsec import read_security

    try:
        sec = read_security(esp)
    except Exception as exc:
        if opts.require_secure:
            _safe_close(esp)
            raise DeviceError(f"{port.device}: cannot read the chip's security state "
                              f"({_short(exc)}); --require-secure refuses it, nothing written") from None
        opts.log(f"{port.device}: chip security state not read ({_short(exc)})")
        return
    state["security"] = sec
    opts.security[port.device] = sec.as_dict()
    opts.log(f"{port.device}: {sec.summary()}")
    if opts.require_secure and not sec.flash_encryption:
        _safe_close(esp)
        raise DeviceError(
            f"{port.device}: chip has no flash encryption (crypt count "
            f"{sec.flash_crypt_cnt:#x}): --require-secure refuses it, nothing written",
            hint="enable flash encryption (release mode) and secure boot v2 first; "
                 "see docs/station.md, \"What a physical attacker gets\"")
    for what in sec.missing():
        opts.log(f"{port.device}: warning: no {what}")


def security_step(port: BadgePort, opts: FlashOptions) -> Step:
    """--skip-image --require-secure: connect esptool only to read the security state."""
    def run():
        if opts.esptool_api is None:
            import esptool.cmds as cmds
            opts.esptool_api = cmds
        api = opts.esptool_api
        try:
            esp = api.detect_chip(port.device, baud=115200, connect_attempts=3)
        except Exception as exc:
            raise DeviceError(f"{port.device}: no chip answers ({_short(exc)})",
                              hint="hold BOOT while pressing EN/RESET, or check the cable") from None
        check_security(port, opts, esp, {})
        try:
            api.reset_chip(esp, "hard-reset")
        finally:
            _safe_close(esp)
        time.sleep(1.5)

    return Step("esptool", f"read the security state of the chip on {port.device} (esptool); "
                           "refuse it without flash encryption; hard reset", run)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def _safe_close(esp) -> None:
    try:
        if esp is not None and getattr(esp, "_port", None) is not None:
            esp._port.close()
    except Exception:
        pass


# ---------------------------------------------------------------------------- install
def firmware_files(firmware_dir: Path) -> list[tuple[Path, str]]:
    """(local file, badge path) for every firmware file to install, parents first."""
    root = Path(firmware_dir)
    if not (root / "main.py").is_file():
        raise InputError(f"no firmware in {root} (main.py missing)")
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIP_NAMES or part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix in (".py", ".mpy", ".json"):
            out.append((path, "/" + rel.as_posix()))
    return out


def aioble_files(aioble_dir: Path) -> list[tuple[Path, str]]:
    root = Path(aioble_dir)
    if (root / "aioble" / "__init__.py").is_file():
        root = root / "aioble"
    if not (root / "__init__.py").is_file():
        raise InputError(f"{aioble_dir} holds no aioble package (aioble/__init__.py)")
    return [(p, "/lib/aioble/" + p.relative_to(root).as_posix())
            for p in sorted(root.rglob("*.py"))]


def _mkdirs(link: BadgeLink, paths: list[str]) -> None:
    dirs = sorted({str(Path(p).parent) for p in paths} - {"/"}, key=len)
    code = "import os\nfor d in %s:\n try:\n  os.mkdir(d)\n except OSError:\n  pass" % (
        json.dumps(_with_parents(dirs)),)
    link.run(code)


def _with_parents(dirs: list[str]) -> list[str]:
    out: list[str] = []
    for d in dirs:
        parts = Path(d).parts[1:]
        for i in range(1, len(parts) + 1):
            p = "/" + "/".join(parts[:i])
            if p not in out:
                out.append(p)
    return out


_RUN_PAYLOAD = 8192   # bytes of file data per raw-REPL run (~11 KB of source on the badge)
_LINE_PAYLOAD = 1536  # bytes per base64 line inside a run


def _write_file(link: BadgeLink, local: Path, dest: str) -> None:
    """Copy a file in as few raw-REPL round trips as its size allows (one for most files),
    to a temp name first and renamed into place, so a cut-off copy never looks installed."""
    data = local.read_bytes()
    tmp = json.dumps(dest + ".tmp")
    for start in range(0, max(len(data), 1), _RUN_PAYLOAD):
        part = data[start:start + _RUN_PAYLOAD]
        lines = ["import binascii", "f=open(%s,%s)" % (tmp, "'wb'" if start == 0 else "'ab'")]
        for i in range(0, len(part), _LINE_PAYLOAD):
            lines.append("f.write(binascii.a2b_base64(%s))"
                         % json.dumps(base64.b64encode(part[i:i + _LINE_PAYLOAD]).decode()))
        lines.append("f.close()")
        if start + _RUN_PAYLOAD >= len(data):
            lines.append("import os\nos.rename(%s,%s)" % (tmp, json.dumps(dest)))
        link.run("\n".join(lines))


def install_steps(port: BadgePort, opts: FlashOptions, link_box: dict) -> list[Step]:
    files = firmware_files(opts.firmware_dir)
    extra: list[tuple[Path, str]] = aioble_files(opts.aioble_dir) if opts.aioble_dir else []
    steps = [Step("session", f"open raw REPL on {port.device} (mpremote transport)",
                  lambda: _open_raw(port, link_box))]
    paths = [d for _, d in files + extra]
    steps.append(Step("install", f"create folders {', '.join(_with_parents(sorted({str(Path(p).parent) for p in paths} - {'/'}, key=len))) or '(none)'}",
                      lambda: _mkdirs(link_box["link"], paths)))
    for local, dest in files:
        steps.append(Step("install", f"copy {local} -> {dest} ({local.stat().st_size} bytes)",
                          lambda l=local, d=dest: _write_file(link_box["link"], l, d)))
    if opts.aioble_dir:
        for local, dest in extra:
            steps.append(Step("aioble", f"copy {local} -> {dest}",
                              lambda l=local, d=dest: _write_file(link_box["link"], l, d)))
    elif opts.aioble_mip:
        steps.append(Step("aioble", "mpremote mip install aioble -> /lib (skipped with a "
                                    "warning when offline: the firmware then uses its own "
                                    "minimal bluetooth driver)",
                          lambda: _mip_aioble(link_box)))
    return steps


def _open_raw(port: BadgePort, link_box: dict) -> None:
    link = BadgeLink(port.device)
    link_box["link"] = link
    link.open(probe=False)


def _mip_aioble(link_box: dict) -> None:
    from mpremote import mip

    link = link_box["link"]
    try:
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):
            mip._install_package(link.transport, "aioble", mip._PACKAGE_INDEX, "/lib", None, True)
    except Exception as exc:
        link_box.setdefault("warnings", []).append(
            f"aioble not installed ({_short(exc)}); the firmware uses its minimal bluetooth driver")


# ---------------------------------------------------------------------------- pairing
_PROBE_CODE = ("import os\ntry:\n import tcbadge.hostif\n hi=1\nexcept Exception:\n hi=0\n"
               "try:\n os.stat('/tc/prov.json')\n pv=1\nexcept OSError:\n pv=0\n"
               "print('{\"hostif\":%d,\"prov\":%d}'%(hi,pv))")


def pairing_steps(port: BadgePort, opts: FlashOptions, db: Database) -> list[Step]:
    """Before anything is written to the badge (image, files, provisioning): a provisioned
    badge must prove it is paired with this station (we authenticate with the secret in the
    database), or be taken over deliberately with --reprovision. Otherwise refuse."""
    desc = (f"pairing check on {port.device}: a provisioned badge must be paired with "
            f"{db.path} (authenticate) or be taken over with --reprovision; nothing is "
            "written to the badge before this check")

    def refuse(what: str):
        raise DeviceError(f"{port.device}: {what}",
                          hint="pass --reprovision to wipe its pairing, keys and log")

    def run():
        link = BadgeLink(port.device)
        try:
            try:
                link.open(probe=False)
            except DeviceError:
                _locked_check(port, opts, db, refuse)   # a locked badge answers only frames
                if not opts.skip_image and not port.is_virtual:
                    return  # no MicroPython answers: a blank chip; the image step comes next
                raise
            try:
                found = BadgeLink._one_json(link.run(_PROBE_CODE), "probe")
            except DeviceError:
                found = {"hostif": 0, "prov": 0}
            if not found.get("hostif"):
                if found.get("prov") and not opts.reprovision:
                    refuse("badge holds a pairing but its firmware does not answer")
                return  # no TraceCode firmware: no pairing to protect
            hello = link.probe()
            if not hello.get("provisioned") or opts.reprovision:
                return
            _prove_pairing(link, f"badge {hello.get('id')!r}", str(hello.get("id", "")), db,
                           refuse, BadgeRefused)
        finally:
            link.close()

    return [Step("provision", desc, run)]


def _prove_pairing(link, who: str, bid: str, db: Database, refuse, refused) -> None:
    """Authenticate with the secret the station database holds for `bid`, or refuse: a badge
    the database does not know, or one that rejects the secret (`refused`: the exception)."""
    known = db.secret(bid)
    if known is None:
        refuse(f"{who} is paired with another station")
    try:
        link.auth(known)
    except refused:
        refuse(f"{who} refused this station's pairing secret")


def _locked_check(port: BadgePort, opts: FlashOptions, db: Database, refuse) -> None:
    """The raw REPL did not answer: is it a locked badge (protocol 2)? Then only its paired
    station may go on, and only with a new image (esptool); the firmware files of a locked
    badge are changed with `tracecode update`, or after `tracecode unlock`."""
    from .link import PROBE_TIMEOUT_S, probe_locked

    try:
        link = probe_locked(port.device, PROBE_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - no port, no badge: the caller's error stands
        return
    if link is None:
        return
    try:
        bid = str(link.hello.get("id", ""))
        if opts.reprovision:
            if opts.skip_image:
                raise DeviceError(f"{port.device}: badge {bid!r} is locked; --reprovision of a "
                                  "locked badge needs a new image (without --skip-image): "
                                  "esptool erases it")
            return
        _prove_pairing(link, f"locked badge {bid!r}", bid, db, refuse, DeviceError)
        if opts.skip_image:
            raise DeviceError(f"{port.device}: badge {bid!r} is locked (protocol 2 only)",
                              hint=f"unlock it first: tracecode unlock -p {port.device} "
                                   "(its firmware files: tracecode update)")
    finally:
        link._close_port()


# ---------------------------------------------------------------------------- provision
def provision_steps(port: BadgePort, opts: FlashOptions, db: Database, link_box: dict,
                    now: Callable[[], float] = time.time) -> list[Step]:
    desc = (f"provision: id={opts.badge_id or '<badge default>'}, board={opts.board.name}, "
            f"time=<host clock>, config={json.dumps(opts.config)}, pairing secret=<32 random "
            f"bytes, stored in {db.path}>, "
            + ("locked (framed protocol only)" if opts.lock else
               "unlocked (developer mode: raw REPL stays open)"))

    def run():
        link: BadgeLink = link_box["link"]
        hello = link.probe()
        bid = opts.badge_id or hello.get("id") or ("tc-" + os.urandom(3).hex())
        known = db.secret(hello.get("id", "")) if hello.get("provisioned") else None
        if hello.get("provisioned"):
            if known is not None:
                link.auth(known)
            elif opts.reprovision:
                _wipe(link)
                link.probe()
            else:
                raise DeviceError(
                    f"{port.device}: badge {hello.get('id')!r} is paired with another station",
                    hint="pass --reprovision to wipe its pairing, keys and log")
        secret = known if known is not None and bid == hello.get("id") else os.urandom(32)
        doc = {"id": bid, "board": opts.board.name, "secret": secret.hex(),
               "time": int(now()), "config": opts.config, "profile": opts.board.profile,
               "lock": bool(opts.lock)}
        # The database learns the secret first: a badge never holds a secret we lost.
        db.add_badge(bid, opts.board.name, secret, fw_version=hello.get("fw"), port=port.device)
        try:
            link.provision(doc)
        except BadgeRefused as exc:
            raise DeviceError(f"{port.device}: badge refused provisioning ({exc.code})") from None
        link_box["badge_id"] = bid

    return [Step("provision", desc, run),
            Step("session", "soft reset: the badge starts its firmware",
                 lambda: link_box["link"].close())]


def _wipe(link: BadgeLink) -> None:
    link.run("import os\nfor d in ('/tc','/log'):\n try:\n  for n in os.listdir(d):\n"
             "   os.remove(d+'/'+n)\n except OSError:\n  pass")


def plan(port: BadgePort, opts: FlashOptions, db: Database, link_box: dict) -> list[Step]:
    # The pairing check comes first: a refused run leaves the badge exactly as it was.
    return (pairing_steps(port, opts, db) + esptool_steps(port, opts)
            + install_steps(port, opts, link_box)
            + provision_steps(port, opts, db, link_box, now=opts.now))


def flash_badge(port: BadgePort, opts: FlashOptions, db: Database, *,
                on_step: Callable[[int, int, Step], None] | None = None) -> dict:
    link_box: dict = {}
    steps = plan(port, opts, db, link_box)
    try:
        for i, step in enumerate(steps):
            if on_step:
                on_step(i, len(steps), step)
            if step.run:
                step.run()
    finally:
        link = link_box.get("link")
        if link is not None:
            link.close()
    return {"port": port.device, "badge_id": link_box.get("badge_id"),
            "board": opts.board.name, "steps": len(steps), "locked": opts.lock,
            "security": opts.security.get(port.device),
            "warnings": link_box.get("warnings", [])}
