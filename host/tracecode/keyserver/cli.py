"""`tracecode keyserver init|issue-code|publish|serve|status`."""

from __future__ import annotations

import argparse
import sys
import threading
import time

from ..errors import InputError
from .store import DEFAULT_CODE_TTL_S, KeyServer


def register(subparsers) -> None:
    p = subparsers.add_parser("keyserver", help="run a small EN key server (codes, uploads, signed batches, HTTP)",
                              description="A key server folder: one-time verification codes, diagnosis-key "
                                          "uploads, signed export batches + index.txt with a hash chain, "
                                          "served over HTTP. See docs/keyserver.md.")
    sub = p.add_subparsers(dest="keyserver_command", metavar="ACTION")
    sub.required = True

    q = sub.add_parser("init", help="create a key server folder and its signing key")
    q.add_argument("--dir", required=True, help="key server folder")
    q.add_argument("--region", default="TC", help="region written into every batch (default TC)")
    q.add_argument("--root", default="tc", help="folder name of the batches and index.txt (default tc)")
    q.add_argument("--key-id", default="tc", help="verification_key_id in signatures")
    q.add_argument("--key-version", default="v1", help="verification_key_version in signatures")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_init)

    q = sub.add_parser("issue-code", help="issue a one-time verification code for one upload")
    q.add_argument("--dir", required=True)
    q.add_argument("--ttl-minutes", type=int, default=DEFAULT_CODE_TTL_S // 60, help="lifetime (default 1440)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_issue)

    q = sub.add_parser("publish", help="turn accepted uploads into signed batches and rewrite index.txt")
    q.add_argument("--dir", required=True)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_publish)

    q = sub.add_parser("serve", help="serve the folder over HTTP with the upload endpoint")
    q.add_argument("--dir", required=True)
    q.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1, loopback)")
    q.add_argument("--port", type=int, default=8080, help="port (0 picks a free one; default 8080)")
    q.add_argument("--publish-every", type=float, default=0, metavar="SECONDS",
                   help="also publish pending uploads this often (default: never; use `publish`)")
    q.add_argument("--threads", type=int, default=None, help="worker threads (default 8)")
    q.add_argument("--connection-limit", type=int, default=None,
                   help="open connections; more are answered 503 at once (default 1000)")
    q.add_argument("--request-deadline", type=float, default=None, metavar="SECONDS",
                   help="a request must arrive in full within this (default 10)")
    q.add_argument("--trusted-proxy", metavar="ADDR",
                   help="address of a reverse proxy whose X-Forwarded-For/-Proto to trust (docs/keyserver.md)")
    q.add_argument("--verbose", action="store_true", help="log server warnings (connection limit, queue depth)")
    q.set_defaults(func=_serve)

    q = sub.add_parser("status", help="codes, uploads and batches of a key server folder")
    q.add_argument("--dir", required=True)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_status)


def _out(args, obj: dict, text: str) -> None:
    if getattr(args, "json", False):
        from ..cli import print_json

        print_json(obj)
    else:
        print(text)


def _init(args) -> int:
    ks = KeyServer.init(args.dir, region=args.region, root=args.root, key_id=args.key_id,
                        key_version=args.key_version)
    _out(args, {"dir": str(ks.dir), "public_key": str(ks.public_key_path()), "root": ks.root,
                "region": ks.region},
         f"key server folder {ks.dir} ready; public key for clients: {ks.public_key_path()}")
    return 0


def _issue(args) -> int:
    if args.ttl_minutes <= 0:
        raise InputError("--ttl-minutes must be positive")
    ks = KeyServer(args.dir)
    code, expires = ks.issue_code(ttl_s=args.ttl_minutes * 60)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires))
    _out(args, {"code": code, "expires_at": expires}, f"{code}  (one upload, valid until {when})")
    return 0


def _publish(args) -> int:
    ks = KeyServer(args.dir)
    paths = ks.publish()
    st = ks.status()
    _out(args, {"new_batches": paths, "batches": st["batches"], "keys_published": st["keys_published"]},
         ("published " + ", ".join(paths)) if paths else "nothing to publish")
    return 0


def _status(args) -> int:
    st = KeyServer(args.dir).status()
    _out(args, st, "\n".join(f"{k}: {v}" for k, v in st.items()))
    return 0


def _serve(args) -> int:
    from .server import make_server

    ks = KeyServer(args.dir)
    if args.port < 0 or args.port > 65535:
        raise InputError("--port must be 0..65535")
    kw: dict = {}
    for name, attr, lo in (("threads", "threads", 1), ("connection_limit", "connection_limit", 1),
                           ("request_deadline_s", "request_deadline", 0.1)):
        value = getattr(args, attr)
        if value is not None:
            if value < lo:
                raise InputError(f"--{attr.replace('_', '-')} must be at least {lo}")
            kw[name] = value
    if args.trusted_proxy:
        kw["trusted_proxy"] = args.trusted_proxy
    httpd = make_server(ks, args.host, args.port, quiet=not args.verbose, **kw)
    stop = threading.Event()
    if args.publish_every and args.publish_every > 0:
        def loop() -> None:
            while not stop.wait(args.publish_every):
                try:
                    new = ks.publish()
                    if new:
                        print("published " + ", ".join(new), flush=True)
                except Exception as exc:  # noqa: BLE001 - keep serving; say what failed
                    print(f"publish failed: {exc}", file=sys.stderr, flush=True)
        threading.Thread(target=loop, daemon=True).start()
    print(f"serving {ks.www} at {httpd.url}/ (index: {httpd.url}/{ks.root}/index.txt, "
          f"upload: POST {httpd.url}/v1/upload); Ctrl-C stops", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        httpd.server_close()
    return 0
