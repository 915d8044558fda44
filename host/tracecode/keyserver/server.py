"""HTTP front of a key server folder (stdlib ThreadingHTTPServer, meant for loopback).

    GET/HEAD /index.txt, /<root>/index.txt, /<root>/*.zip, /<root>/*.chain   files under DIR/www
    POST /v1/upload   {"code": "...", "keys": [...]}  ->  201 {"ok": true, "upload": id, "keys": n}
                      errors: {"error": "<code>", "message": "..."} with 400/403/411/413/415/429

Nothing outside DIR/www is ever served (state.sqlite and keys/ live beside it). Requests are
bounded: a socket timeout, a body size limit, and a limit on failed code attempts per client.
"""

from __future__ import annotations

import json
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .store import KeyServer, UploadRejected, parse_upload

MAX_BODY = 64 * 1024
REQUEST_TIMEOUT_S = 10
FAILED_CODE_LIMIT = 10          # failed code attempts per client address ...
FAILED_CODE_WINDOW_S = 60       # ... per this many seconds
_TYPES = {".txt": "text/plain; charset=utf-8", ".zip": "application/zip", ".chain": "application/json"}


class _Throttle:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fails: dict[str, list[float]] = {}

    def blocked(self, who: str) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._fails.get(who, []) if now - t < FAILED_CODE_WINDOW_S]
            self._fails[who] = recent
            return len(recent) >= FAILED_CODE_LIMIT

    def fail(self, who: str) -> None:
        with self._lock:
            self._fails.setdefault(who, []).append(time.monotonic())


class KeyServerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, keyserver: KeyServer, address: tuple[str, int], *, quiet: bool = True):
        self.keyserver = keyserver
        self.quiet = quiet
        self.throttle = _Throttle()
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: KeyServerHTTPServer
    timeout = REQUEST_TIMEOUT_S
    server_version = "tracecode-keyserver/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        if not self.server.quiet:
            super().log_message(format, *args)

    # -- static files -----------------------------------------------------------------------

    def _resolve(self) -> Path | None:
        path = unquote(urlsplit(self.path).path)
        parts = [p for p in path.split("/") if p]
        if not parts or any(p in (".", "..") or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
            return None
        if Path(parts[-1]).suffix not in _TYPES:
            return None
        www = self.server.keyserver.www.resolve()
        target = www.joinpath(*parts).resolve()
        if www not in target.parents or not target.is_file():
            return None
        return target

    def _static(self, head: bool) -> None:
        target = self._resolve()
        if target is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not_found", "message": "no such file"})
            return
        data = target.read_bytes()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", _TYPES[target.suffix])
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache" if target.name == "index.txt" else "max-age=86400")
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._static(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._static(head=True)

    # -- upload ---------------------------------------------------------------------------------

    def _json(self, status: int, obj: dict) -> None:
        body = (json.dumps(obj) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        if urlsplit(self.path).path.rstrip("/") != "/v1/upload":
            self._json(HTTPStatus.NOT_FOUND, {"error": "not_found", "message": "POST goes to /v1/upload"})
            return
        who = self.client_address[0]
        try:
            if self.server.throttle.blocked(who):
                raise UploadRejected("too many failed code attempts; try again later", status=429,
                                     code="rate_limited")
            length_s = self.headers.get("Content-Length")
            if length_s is None:
                raise UploadRejected("Content-Length required", status=411, code="length_required")
            try:
                length = int(length_s)
            except ValueError:
                raise UploadRejected("bad Content-Length", code="bad_request") from None
            if length < 0 or length > MAX_BODY:
                raise UploadRejected(f"body too large (at most {MAX_BODY} bytes)", status=413, code="too_large")
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise UploadRejected("Content-Type must be application/json", status=415, code="bad_content_type")
            body = self.rfile.read(length)
            if len(body) != length:
                raise UploadRejected("truncated body", code="bad_request")
            try:
                doc = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise UploadRejected("body is not valid JSON", code="bad_json") from None
            code, keys = parse_upload(doc)
            try:
                upload_id = self.server.keyserver.accept_upload(code, keys)
            except UploadRejected as exc:
                if exc.status == 403:
                    self.server.throttle.fail(who)
                raise
        except UploadRejected as exc:
            self._json(exc.status, {"error": exc.code, "message": str(exc)})
            return
        except Exception:  # noqa: BLE001 - never leak internals (or key material) to the client
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal", "message": "internal error"})
            return
        self._json(HTTPStatus.CREATED, {"ok": True, "upload": upload_id, "keys": len(keys)})


def make_server(keyserver: KeyServer, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True) -> KeyServerHTTPServer:
    """Bind (port 0 picks a free port); call .serve_forever() or start_in_thread()."""
    return KeyServerHTTPServer(keyserver, (host, port), quiet=quiet)


class RunningServer:
    """A server on a background thread, for tests and the pipeline: `with RunningServer(ks) as srv: srv.url`."""

    def __init__(self, keyserver: KeyServer, host: str = "127.0.0.1", port: int = 0):
        self.httpd = make_server(keyserver, host, port)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="tc-keyserver", daemon=True)

    @property
    def url(self) -> str:
        return self.httpd.url

    def __enter__(self) -> "RunningServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
