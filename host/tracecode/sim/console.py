"""A badge's serial console: input buffer, output, and its loopback TCP / pseudo-terminal ends.

The console also models the USB-serial bridge's modem lines and the classic ESP32 DevKit
auto-program circuit (two NPN transistors between the bridge's DTR#/RTS# outputs and the chip's
EN and BOOT strapping pins): `set_lines(dtr=, rts=)` with pyserial's convention (True =
asserted = line driven low). RTS asserted with DTR released pulls EN low (the chip is held in
reset); DTR asserted with RTS released pulls the BOOT pin low (GPIO0 on ESP32/S2/S3, GPIO9 on
C2/C3/C6/H2); both or neither asserted leave EN and BOOT alone. When EN comes up the chip samples
its BOOT pin EN_SETTLE_S (wall clock) later, the RC delay of the EN pin's capacitor that makes
esptool's sequential DTR/RTS writes work: BOOT low -> the ROM waits for a download (the virtual
badge has no ROM loader: it prints the ROM's banner and stays silent until the next reset),
BOOT high -> a normal boot (power-on reset cause). A loopback socket or a pty carries no modem
lines, so hosts reach them through `set_lines` or `modem()` (a pyserial-like object that
esptool's reset sequences in `esp_pylib.serial_reset` accept).
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time

# The strapping pin whose low level at reset selects the ROM's download boot, per chip.
BOOT_STRAP_PIN = {"esp32": 0, "esp32s2": 0, "esp32s3": 0,
                  "esp32c2": 9, "esp32c3": 9, "esp32c6": 9, "esp32h2": 9}
EN_SETTLE_S = 0.005   # EN's RC (10 kOhm, 1 uF on a DevKitC) before the strapping pins are read

# Host protocol v2 sessions (docs/sim.md, "Time during host sessions"): a frame starts with
# these two bytes. While a host is in a session with a badge, a paused fleet lets virtual time
# run at wall-clock speed.
FRAME_MAGIC = b"\xa7\x7c"
SESSION_LINGER_S = 2.0     # wall seconds after the last frame either way
SESSION_PENDING_MAX_S = 120.0   # an unanswered request keeps time running at most this long


def boot_strap_pin(profile: dict | None) -> int:
    chip = str((profile or {}).get("chip", "esp32")).lower().replace("-", "").replace("_", "")
    return BOOT_STRAP_PIN.get(chip, 0)


class Console:
    def __init__(self, badge):
        self.badge = badge
        self._in = bytearray()
        self._lock = threading.Lock()
        self._out: queue.Queue = queue.Queue()
        self._endpoint = None          # object with send(bytes) / close()
        self.rate: float | None = None  # bytes per second, both directions
        self._cut_after: int | None = None
        self.transcript = bytearray()
        self.tx_bytes = 0
        self.rx_bytes = 0
        self._server: socket.socket | None = None
        self.port: int | None = None
        self.pty_path: str | None = None
        self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                        name="console-out-" + badge.name)
        self._writer.start()
        self._closed = False
        # modem lines (pyserial convention: True = asserted = low) and what they drive
        self.dtr = False
        self.rts = False
        self.en_low = False           # EN held low by the auto-program circuit
        self.boot_low = False         # BOOT strapping pin held low by it
        self.held = False             # in reset, or waiting in the ROM's download mode
        self.download_mode = False
        self.line_log: list[tuple[bool, bool]] = []
        self._lines_lock = threading.RLock()
        self._en_timer: threading.Timer | None = None
        self._en_token = 0
        # protocol v2 session tracking (wall clock, time.monotonic())
        self._sess_in = None          # last frame from the host
        self._sess_out = None         # last frame from the badge
        self._sess_pending = False    # a frame came in after the badge's last frame
        self._sess_v2 = False         # this badge has answered a frame (it speaks protocol 2)
        self._sess_tail_in = b""
        self._sess_tail_out = b""
        reg = getattr(badge.fleet, "_session_consoles", None)
        if reg is not None:
            reg.append(self)

    # -- configuration -------------------------------------------------------------------------
    def throttle(self, bytes_per_s: float | None) -> None:
        """Limit the link to `bytes_per_s` each way (e.g. 11520 for 115200 baud); None = off."""
        self.rate = bytes_per_s

    def disconnect(self) -> None:
        """Drop the connected host now (a serial cable pulled)."""
        ep = self._endpoint
        self._endpoint = None
        if ep is not None:
            ep.close()

    def disconnect_after(self, nbytes: int) -> None:
        """Drop the host after `nbytes` more bytes have been sent to it."""
        self._cut_after = nbytes

    # -- modem lines: DTR/RTS through the DevKit auto-program circuit -------------------------------
    def set_lines(self, dtr: bool | None = None, rts: bool | None = None) -> None:
        """The host sets its bridge's DTR and/or RTS (both in one step when both are given, as
        TIOCMSET does; None leaves a line as it is)."""
        with self._lines_lock:
            if dtr is not None:
                self.dtr = bool(dtr)
            if rts is not None:
                self.rts = bool(rts)
            self.line_log.append((self.dtr, self.rts))
            en_low = self.rts and not self.dtr
            boot_low = self.dtr and not self.rts
            if boot_low != self.boot_low:
                self.boot_low = boot_low
                b = self.badge
                b._do(b._drive, boot_strap_pin(b.profile), 0 if boot_low else None)
            if en_low != self.en_low:
                self.en_low = en_low
                if self._en_timer is not None:
                    self._en_timer.cancel()
                    self._en_timer = None
                self._en_token += 1
                if en_low:
                    self._enter_reset()
                elif self.badge.fleet._driver_thread is threading.current_thread():
                    # called in the simulation (an event at a virtual time): settle in virtual time
                    self.badge.fleet.schedule(self.badge.fleet.clock() + EN_SETTLE_S,
                                              self._leave_reset, self._en_token)
                else:
                    # a host thread toggling lines in wall-clock time
                    self._en_timer = threading.Timer(EN_SETTLE_S, self._leave_reset,
                                                     (self._en_token,))
                    self._en_timer.daemon = True
                    self._en_timer.start()

    def modem(self) -> "ModemLines":
        """A pyserial-like handle on the modem lines (setDTR/setRTS, .dtr/.rts) for esptool's
        reset sequences (`esp_pylib.serial_reset.classic_bootloader_reset(console.modem())`)."""
        return ModemLines(self)

    def _enter_reset(self) -> None:
        self.held = True
        self.download_mode = False
        self.clear_input()
        if self.badge.powered:
            self.badge.power_cut()

    def _leave_reset(self, token: int) -> None:
        with self._lines_lock:
            if token != self._en_token or self.en_low or self._closed:
                return      # EN went low again before the chip came out of reset
            self._en_timer = None
            chip = str(self.badge.profile.get("chip", "esp32"))
            if self.boot_low:
                self.download_mode = True
                self._rom_write((b"rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/"
                                 b"SDIO_REI_REO_V2))\r\n" if chip == "esp32" else
                                 b"ESP-ROM:%s\r\nrst:0x1 (POWERON),boot:(DOWNLOAD(USB/UART0))\r\n"
                                 % chip.encode()) + b"waiting for download\r\n")
                return
            self.download_mode = False
            self.held = False
            self._rom_write(b"ets Jul 29 2019 12:21:46\r\n\r\nrst:0x1 (POWERON_RESET),"
                            b"boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n" if chip == "esp32" else
                            b"ESP-ROM:%s\r\nrst:0x1 (POWERON),boot:0x8 (SPI_FAST_FLASH_BOOT)\r\n"
                            % chip.encode())
        self.badge.power_on()

    def _rom_write(self, data: bytes) -> None:
        """Output of the ROM (the badge's firmware is not running)."""
        self.transcript += data
        if self._endpoint is not None:
            self._out.put(data)

    # -- protocol v2 sessions ----------------------------------------------------------------------
    def _note_frames(self, data: bytes, incoming: bool) -> None:
        """Watch the bytes either way for frame starts (MAGIC, also split across chunks)."""
        tail = self._sess_tail_in if incoming else self._sess_tail_out
        if FRAME_MAGIC in tail + data[:1] or FRAME_MAGIC in data:
            now = time.monotonic()
            if incoming:
                self._sess_in = now
                self._sess_pending = True
                started = getattr(self.badge.fleet, "_session_started", None)
                if started is not None:
                    started()
            else:
                self._sess_out = now
                self._sess_pending = False
                self._sess_v2 = True
        if data:
            if incoming:
                self._sess_tail_in = data[-1:]
            else:
                self._sess_tail_out = data[-1:]

    def session_active(self, now: float | None = None) -> bool:
        """Is a host in a protocol v2 session with this badge (wall clock `now`)? Yes within
        SESSION_LINGER_S of the last frame either way, and while a request to a badge that
        speaks protocol 2 is unanswered and its host still connected (SESSION_PENDING_MAX_S at
        most: an EXPORT waits for the wearer's button)."""
        t_in = self._sess_in
        if t_in is None:
            return False
        if now is None:
            now = time.monotonic()
        last = t_in if self._sess_out is None else max(t_in, self._sess_out)
        if now < last + SESSION_LINGER_S:
            return True
        return (self._sess_pending and self._sess_v2 and self._endpoint is not None
                and now < t_in + SESSION_PENDING_MAX_S)

    # -- badge side ------------------------------------------------------------------------------
    def has_input(self) -> bool:
        return bool(self._in)

    def read_byte(self) -> int | None:
        with self._lock:
            if self._in:
                c = self._in[0]
                del self._in[0]
                return c
        return None

    def write(self, data: bytes) -> None:
        if not data or not self.badge.powered:
            return
        if self._endpoint is not None:
            self._note_frames(data, False)
        self.transcript += data
        if len(self.transcript) > 65536:
            del self.transcript[:-32768]
        if self._endpoint is not None:
            self._out.put(data)

    def clear_input(self) -> None:
        with self._lock:
            self._in.clear()

    # -- host side ---------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self._note_frames(data, True)
        if self.held:       # in reset or in the ROM's download mode: nobody reads the UART
            self.rx_bytes += len(data)
            return
        cpu = self.badge.cpu
        added = False
        intr = self.badge.kbd_intr_char
        with self._lock:
            for c in data:
                if c == intr and cpu.kbd_enabled:
                    cpu.kbd_pending = True
                else:
                    self._in.append(c)
                added = True
        self.rx_bytes += len(data)
        if added:
            cpu.post_wake()

    def _pace(self, n: int) -> None:
        if self.rate:
            time.sleep(n / self.rate)

    def _write_loop(self) -> None:
        while True:
            data = self._out.get()
            if data is None:
                return
            ep = self._endpoint
            if ep is None:
                continue
            chunk = max(64, int(self.rate / 50)) if self.rate else len(data)
            for i in range(0, len(data), chunk):
                part = data[i:i + chunk]
                if self._cut_after is not None:
                    if self._cut_after <= len(part):
                        part = part[: self._cut_after]
                        self._cut_after = None
                        try:
                            ep.send(part)
                        finally:
                            self.disconnect()
                        break
                    self._cut_after -= len(part)
                try:
                    ep.send(part)
                    self.tx_bytes += len(part)
                except OSError:
                    break
                self._pace(len(part))

    def _attach(self, ep) -> None:
        old = self._endpoint
        self._endpoint = ep
        if old is not None and old is not ep:
            old.close()

    def _detach(self, ep) -> None:
        if self._endpoint is ep:
            self._endpoint = None

    # -- loopback TCP --------------------------------------------------------------------------------
    def serve_socket(self, port: int = 0, host: str = "127.0.0.1") -> str:
        if self._server is None:
            srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((host, port))
            srv.listen(4)
            self._server = srv
            self.port = srv.getsockname()[1]
            threading.Thread(target=self._accept_loop, daemon=True,
                             name="console-accept-" + self.badge.name).start()
        return "socket://127.0.0.1:%d" % self.port

    def _accept_loop(self) -> None:
        srv = self._server
        while not self._closed:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ep = _SockEndpoint(conn)
            self._attach(ep)
            threading.Thread(target=self._sock_reader, args=(ep,), daemon=True).start()

    def _sock_reader(self, ep) -> None:
        try:
            while True:
                try:
                    data = ep.sock.recv(4096)
                except OSError:
                    break
                if not data:
                    break
                if self._endpoint is not ep:
                    break
                if self.rate:
                    for i in range(0, len(data), 64):
                        self.feed(data[i:i + 64])
                        self._pace(len(data[i:i + 64]))
                else:
                    self.feed(data)
        finally:
            self._detach(ep)
            ep.close()

    # -- pseudo-terminal -------------------------------------------------------------------------
    def serve_pty(self) -> str:
        if self.pty_path is None:
            import tty
            master, slave = os.openpty()
            tty.setraw(slave)
            self.pty_path = os.ttyname(slave)
            ep = _PtyEndpoint(master, slave)
            self._attach(ep)
            threading.Thread(target=self._pty_reader, args=(ep,), daemon=True).start()
        return self.pty_path

    def _pty_reader(self, ep) -> None:
        while not self._closed:
            try:
                data = os.read(ep.master, 4096)
            except OSError:
                return
            if not data:
                return
            self._endpoint = ep if self._endpoint is None else self._endpoint
            self.feed(data)

    def close(self) -> None:
        self._closed = True
        if self._en_timer is not None:
            self._en_timer.cancel()
        self.disconnect()
        if self._server is not None:
            try:
                self._server.close()
            except OSError:
                pass
        self._out.put(None)


class _SockEndpoint:
    def __init__(self, sock: socket.socket):
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


class _PtyEndpoint:
    def __init__(self, master: int, slave: int):
        self.master = master
        self.slave = slave

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        pass


class ModemLines:
    """pyserial's modem-line surface over a virtual console (what esptool's reset code uses)."""

    def __init__(self, console: Console):
        self._console = console
        self.name = "sim:" + console.badge.name

    @property
    def dtr(self) -> bool:
        return self._console.dtr

    @dtr.setter
    def dtr(self, value: bool) -> None:
        self._console.set_lines(dtr=value)

    @property
    def rts(self) -> bool:
        return self._console.rts

    @rts.setter
    def rts(self, value: bool) -> None:
        self._console.set_lines(rts=value)

    def setDTR(self, value: bool = True) -> None:  # noqa: N802 (pyserial name)
        self._console.set_lines(dtr=value)

    def setRTS(self, value: bool = True) -> None:  # noqa: N802 (pyserial name)
        self._console.set_lines(rts=value)

    def set_both(self, dtr: bool, rts: bool) -> None:
        """Both lines in one step (what `set_dtr_rts`'s TIOCMSET does on a real port)."""
        self._console.set_lines(dtr=dtr, rts=rts)

    def isOpen(self) -> bool:  # noqa: N802 (pyserial name)
        return True

    def open(self) -> None:
        pass
