"""A badge's serial console: input buffer, output, and its loopback TCP / pseudo-terminal ends."""

from __future__ import annotations

import os
import queue
import socket
import threading
import time


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
