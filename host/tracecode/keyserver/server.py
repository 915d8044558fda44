"""HTTP front of a key server folder: a WSGI application served by waitress.

    GET/HEAD /index.txt, /<root>/index.txt, /<root>/*.zip, /<root>/*.chain,
             /<root>/stats.json, /<root>/stats.json.sig          files under DIR/www
    POST /v1/upload   {"code": "...", "keys": [...]}  ->  201 {"ok": true, "upload": id, "keys": n}
                      errors: {"error": "<code>", "message": "..."} with 400/403/411/413/415/429/503

Nothing outside DIR/www is ever served (state.sqlite and keys/ live beside it).

Under load (docs/keyserver.md, "Under load"): waitress reads every request in full on its
event loop before a worker thread sees it, so a slow client holds a socket, never a thread.
On top of waitress's own limits (header and body size, idle channel timeout, listen backlog)
this module adds what waitress lacks:
- a request deadline: a request whose headers and body have not fully arrived within
  `request_deadline_s` of its first byte is cut (slowloris headers, bodies trickled 1 byte at a time);
- refusal instead of silence: a connection over `connection_limit` is answered at once with
  503 and closed (waitress itself would stop accepting and leave clients in the backlog), and a
  request that waited for a worker longer than the queue allows is answered 503;
- JSON bounded in depth (nested deeper than a valid upload can be: 400, never a RecursionError);
- quiet logs: clients that leave early are not errors (no tracebacks on stderr).
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
import time
from http import HTTPStatus
from pathlib import Path
from typing import Callable, Iterable

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer

from .store import KeyServer, UploadRejected, parse_upload

MAX_BODY = 64 * 1024
MAX_JSON_DEPTH = 8                 # a valid upload is 3 deep: {"keys": [{...}]}
REQUEST_DEADLINE_S = 10.0          # whole request (headers + body) must arrive within this
IDLE_TIMEOUT_S = 30                # keep-alive connection with no request
CONNECTION_LIMIT = 1000            # open connections; more are answered 503 at once
BACKLOG = 2048                     # listen queue (the kernel caps it at net.core.somaxconn)
THREADS = 8                        # WSGI worker threads
MAX_QUEUED = 512                   # requests waiting for a worker; more are answered 503
REQUEST_TIMEOUT_S = REQUEST_DEADLINE_S   # old name
FAILED_CODE_LIMIT = 10          # failed code attempts per client address ...
FAILED_CODE_WINDOW_S = 60       # ... per this many seconds
_TYPES = {".txt": "text/plain; charset=utf-8", ".zip": "application/zip", ".chain": "application/json",
          ".json": "application/json", ".sig": "text/plain; charset=us-ascii"}
_SERVED_JSON = ("stats.json", "stats.json.sig")    # the only .json/.sig files served
_LOG = logging.getLogger("tracecode.keyserver")
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: 64\r\n\r\n"
            + b'{"error": "busy", "message": "too many connections; retry later"}'[:64])


class _Throttle:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fails: dict[str, list[float]] = {}

    def blocked(self, who: str) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._fails.get(who, []) if now - t < FAILED_CODE_WINDOW_S]
            if recent:
                self._fails[who] = recent
            else:
                self._fails.pop(who, None)
            return len(recent) >= FAILED_CODE_LIMIT

    def fail(self, who: str) -> None:
        with self._lock:
            self._fails.setdefault(who, []).append(time.monotonic())


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if `text` nests arrays/objects deeper than `limit` (strings are skipped)."""
    depth = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


# ------------------------------------------------------------------------------- the application


class KeyServerApp:
    """The WSGI application: static published tree + the upload endpoint."""

    def __init__(self, keyserver: KeyServer, *, queue_depth: Callable[[], int] = lambda: 0,
                 max_queued: int = MAX_QUEUED):
        self.keyserver = keyserver
        self.throttle = _Throttle()
        self.queue_depth = queue_depth
        self.max_queued = max_queued
        self._www = keyserver.www.resolve()

    def __call__(self, environ, start_response) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if self.queue_depth() > self.max_queued:
                status, headers, body = self._json(HTTPStatus.SERVICE_UNAVAILABLE,
                                                   {"error": "busy", "message": "server busy; retry later"},
                                                   extra=[("Retry-After", "1")])
            elif method in ("GET", "HEAD"):
                status, headers, body = self._static(environ)
            elif method == "POST":
                status, headers, body = self._post(environ)
            else:
                status, headers, body = self._json(HTTPStatus.METHOD_NOT_ALLOWED,
                                                   {"error": "method_not_allowed", "message": "GET, HEAD or POST"},
                                                   extra=[("Allow", "GET, HEAD, POST")])
        except Exception:  # noqa: BLE001 - never leak internals (or key material) to the client
            _LOG.error("internal error answering %s", method)
            status, headers, body = self._json(HTTPStatus.INTERNAL_SERVER_ERROR,
                                               {"error": "internal", "message": "internal error"})
        start_response(f"{status.value} {status.phrase}", headers)
        return [b""] if method == "HEAD" else [body]

    @staticmethod
    def _json(status: HTTPStatus, obj: dict, extra: list | None = None):
        body = (json.dumps(obj) + "\n").encode("utf-8")
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        return status, headers + (extra or []), body

    def _resolve(self, raw_path: str) -> Path | None:
        path = raw_path
        parts = [p for p in path.split("/") if p]
        if not parts or any(p in (".", "..") or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
            return None
        suffix = Path(parts[-1]).suffix
        if suffix not in _TYPES or (suffix in (".json", ".sig") and parts[-1] not in _SERVED_JSON):
            return None
        target = self._www.joinpath(*parts).resolve()
        if self._www not in target.parents or not target.is_file():
            return None
        return target

    def _static(self, environ):
        # PATH_INFO is percent-decoded once by waitress; it is not decoded again (a file name
        # with "%" in it never exists under www/, and "%252e%252e" stays a literal name)
        target = self._resolve(environ.get("PATH_INFO", "/"))
        if target is None:
            return self._json(HTTPStatus.NOT_FOUND, {"error": "not_found", "message": "no such file"})
        try:
            data = target.read_bytes()
        except OSError:
            return self._json(HTTPStatus.NOT_FOUND, {"error": "not_found", "message": "no such file"})
        cache = "max-age=86400" if target.suffix in (".zip", ".chain") else "no-cache"
        return HTTPStatus.OK, [("Content-Type", _TYPES[target.suffix]), ("Content-Length", str(len(data))),
                               ("Cache-Control", cache)], data

    def _post(self, environ):
        if environ.get("PATH_INFO", "").rstrip("/") != "/v1/upload":
            return self._json(HTTPStatus.NOT_FOUND, {"error": "not_found", "message": "POST goes to /v1/upload"})
        who = environ.get("REMOTE_ADDR", "?")
        try:
            if self.throttle.blocked(who):
                raise UploadRejected("too many failed code attempts; try again later", status=429,
                                     code="rate_limited")
            length_s = environ.get("CONTENT_LENGTH")
            if not length_s and "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
                raise UploadRejected("Content-Length required", status=411, code="length_required")
            try:
                length = int(length_s or 0)
            except ValueError:
                raise UploadRejected("bad Content-Length", code="bad_request") from None
            if length < 0 or length > MAX_BODY:
                raise UploadRejected(f"body too large (at most {MAX_BODY} bytes)", status=413, code="too_large")
            ctype = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise UploadRejected("Content-Type must be application/json", status=415, code="bad_content_type")
            body = environ["wsgi.input"].read(length)
            if len(body) != length:
                raise UploadRejected("truncated body", code="bad_request")
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise UploadRejected("body is not valid JSON", code="bad_json") from None
            if json_too_deep(text):
                raise UploadRejected(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", code="bad_json")
            try:
                doc = json.loads(text)
            except (ValueError, RecursionError):
                raise UploadRejected("body is not valid JSON", code="bad_json") from None
            code, keys = parse_upload(doc)
            try:
                upload_id = self.keyserver.accept_upload(code, keys)
            except UploadRejected as exc:
                if exc.status == 403:
                    self.throttle.fail(who)
                raise
        except UploadRejected as exc:
            return self._json(HTTPStatus(exc.status), {"error": exc.code, "message": str(exc)})
        return self._json(HTTPStatus.CREATED, {"ok": True, "upload": upload_id, "keys": len(keys)})


# ------------------------------------------------------------------------------- waitress, bounded


class _DeadlineChannel(HTTPChannel):
    """A waitress channel that remembers when the request it is still receiving began."""

    request_started: float | None = None
    _tracked = None

    def received(self, data):
        result = super().received(data)
        if self.request is None:
            self.request_started = None
            self._tracked = None
        elif self.request is not self._tracked:
            self._tracked = self.request
            self.request_started = time.monotonic()
        return result


class _Refuser(wasyncore.dispatcher):
    """An accepted connection over the limit: write a 503, read and drop what the client sends,
    close on its EOF or after a second (so the client reads the answer, not a reset)."""

    def __init__(self, sock, map):
        super().__init__(sock, map=map)
        self.out = _REFUSAL
        self.until = time.monotonic() + 1.0

    def readable(self):
        if time.monotonic() > self.until:
            self.close()
            return False
        return True

    def writable(self):
        return bool(self.out)

    def handle_write(self):
        try:
            n = self.send(self.out)
        except OSError:
            self.close()
            return
        self.out = self.out[n:]
        if not self.out:
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def handle_read(self):
        try:
            data = self.recv(65536)
        except OSError:
            self.close()
            return
        if not data:
            self.close()

    def handle_error(self):
        self.close()

    def handle_close(self):
        self.close()


class KeyServerHTTPServer(TcpWSGIServer):
    """waitress's TCP server with a request deadline and immediate 503 refusals over the limit."""

    channel_class = _DeadlineChannel

    def __init__(self, app, *, request_deadline_s: float, **kw):
        self.request_deadline_s = request_deadline_s
        self.refused = 0
        self.cut = 0
        super().__init__(app, **kw)

    def readable(self):
        super().readable()           # runs maintenance; its overflow logic is replaced below
        return self.accepting

    def handle_accept(self):
        if len(self.active_channels) < self.adj.connection_limit:
            return super().handle_accept()
        try:
            pair = self.accept()
        except OSError:
            return
        if pair is None:
            return
        self.refused += 1
        _Refuser(pair[0], self._map)

    def maintenance(self, now):
        super().maintenance(now)
        t = time.monotonic()
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if started is not None and not channel.requests and t - started > self.request_deadline_s:
                channel.request_started = None
                channel.will_close = True
                self.cut += 1

    def handle_error(self):         # never a traceback for a socket error on accept
        _LOG.debug("accept error", exc_info=True)

    @property
    def url(self) -> str:
        return f"http://{self.effective_host}:{self.effective_port}"

    # -- running ----------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.2, stop: threading.Event | None = None) -> None:
        self._stop = stop or getattr(self, "_stop", None) or threading.Event()
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=poll_interval, use_poll=True, map=self._map, count=1)
        finally:
            self._close_all()

    def shutdown(self) -> None:
        if getattr(self, "_stop", None) is None:
            self._stop = threading.Event()
        self._stop.set()

    def server_close(self) -> None:
        self._close_all()

    def _close_all(self) -> None:
        for d in list(self._map.values()):
            try:
                d.close()
            except OSError:
                pass
        self.task_dispatcher.shutdown(cancel_pending=True, timeout=2)


def _quiet_waitress(verbose: bool) -> None:
    for name in ("waitress", "waitress.queue"):
        lg = logging.getLogger(name)
        lg.propagate = False
        lg.handlers[:] = [logging.NullHandler()] if not verbose else [logging.StreamHandler()]
        lg.setLevel(logging.WARNING if verbose else logging.CRITICAL)
    if not _LOG.handlers:
        _LOG.addHandler(logging.StreamHandler())
        _LOG.propagate = False


def _raise_fd_limit(need: int) -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, max(soft, need)) if hard != resource.RLIM_INFINITY else max(soft, need)
        if want > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass


def make_server(keyserver: KeyServer, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True,
                threads: int = THREADS, connection_limit: int = CONNECTION_LIMIT, backlog: int = BACKLOG,
                request_deadline_s: float = REQUEST_DEADLINE_S, idle_timeout_s: int = IDLE_TIMEOUT_S,
                max_queued: int = MAX_QUEUED, trusted_proxy: str | None = None) -> KeyServerHTTPServer:
    """Bind (port 0 picks a free port); call .serve_forever() (another thread may .shutdown())."""
    _quiet_waitress(not quiet)
    _raise_fd_limit(connection_limit * 2 + 256)
    holder: dict = {}

    def depth() -> int:
        srv = holder.get("srv")
        return len(srv.task_dispatcher.queue) if srv is not None else 0

    app = KeyServerApp(keyserver, queue_depth=depth, max_queued=max_queued)
    kw = dict(host=host, port=port, threads=threads, connection_limit=connection_limit, backlog=backlog,
              channel_timeout=idle_timeout_s, cleanup_interval=1, asyncore_use_poll=True,
              max_request_body_size=max(MAX_BODY * 4, 1024 * 1024), max_request_header_size=16 * 1024,
              log_socket_errors=False, expose_tracebacks=False, ident="tracecode-keyserver/2",
              url_scheme="http")
    if trusted_proxy:
        kw.update(trusted_proxy=trusted_proxy, trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto"},
                  clear_untrusted_proxy_headers=True)
    adj = Adjustments(**kw)
    try:
        srv = KeyServerHTTPServer(app, request_deadline_s=request_deadline_s, adj=adj, map={})
    except OSError as exc:
        from ..errors import InputError

        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise InputError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
        raise
    holder["srv"] = srv
    srv.app = app
    return srv


class RunningServer:
    """A server on a background thread, for tests and the pipeline: `with RunningServer(ks) as srv: srv.url`."""

    def __init__(self, keyserver: KeyServer, host: str = "127.0.0.1", port: int = 0, **kw):
        self.httpd = make_server(keyserver, host, port, **kw)
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
        self.thread.join(timeout=5)
