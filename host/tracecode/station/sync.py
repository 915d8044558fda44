"""`tracecode sync`: pull a badge's new log bytes into the database, then acknowledge them.

The link is chosen by `link.open_link`: a locked badge speaks framed protocol version 2
(`frames.LockedLink`: binary READs of up to 4 KiB, pipelined), a developer-mode badge the
raw-REPL version 1 (`link.BadgeLink`); the steps are the same.

Order of a session (each step safe to interrupt by unplugging):
 1. hello + HMAC authentication with the pairing secret from the database (locked badges
    also prove the secret to the station);
 2. set the badge clock (its drift is reported);
 3. list segments; for each day pull bytes from max(badge ack, database synced offset) to
    the last whole record; verify the header and every record CRC (a bad record is read
    again once; still bad means flash corruption: reported and skipped);
 4. ONE database transaction stores the records (UNIQUE per badge, day and record bytes)
    and the synced offsets;
 5. only then acknowledge each day to the badge (it may now free acknowledged days);
 6. deliver a pending health code, read status (battery, flash, log), close with a soft reset.
Unplugged before 4: nothing stored, nothing acknowledged; the next sync pulls it again.
Unplugged between 4 and 5: the next sync pulls nothing new and acknowledges what is stored.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from ..errors import DeviceError
from . import logfmt
from .db import Database
from .link import BadgeLink, BadgeRefused, open_link

Progress = Callable[[str, int, int], None]   # (stage, done bytes, total bytes)


@dataclass
class SyncReport:
    port: str
    badge_id: str = ""
    ok: bool = False
    session_id: int | None = None
    drift_s: float | None = None
    records_new: int = 0
    records_dup: int = 0
    crc_errors: int = 0
    payload_bytes: int = 0
    wire_bytes: int = 0
    pull_wire_bytes: int = 0
    pull_seconds: float = 0.0
    seconds: float = 0.0
    acked: dict = field(default_factory=dict)
    health_set: str | None = None
    battery_pct: int | None = None
    battery_mv: int | None = None
    flash_free: int | None = None
    flash_total: int | None = None
    fw: str | None = None
    running: bool | None = None
    coverage: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    error: str | None = None
    protocol: int | None = None       # 2: locked badge (frames), 1: developer mode (raw REPL)
    rerequests: int = 0               # v2: replies asked for again (bad CRC, lost session)

    @property
    def ratio(self) -> float:
        return self.payload_bytes / self.pull_wire_bytes if self.pull_wire_bytes else 0.0

    @property
    def throughput(self) -> float:
        return self.payload_bytes / self.pull_seconds if self.pull_seconds > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["payload_wire_ratio"] = round(self.ratio, 4)
        d["payload_bytes_per_s"] = round(self.throughput, 1)
        return d


def _record_end(size: int) -> int:
    """Offset just past the last whole record of a file of `size` bytes."""
    if size < logfmt.HEADER_SIZE:
        return 0
    return logfmt.HEADER_SIZE + (size - logfmt.HEADER_SIZE) // logfmt.RECORD_SIZE * logfmt.RECORD_SIZE


def authenticate(db: Database, link: BadgeLink) -> str:
    """Check the badge is provisioned and known here, then prove the pairing secret."""
    bid = link.badge_id
    if not link.hello.get("provisioned") and not link.hello.get("locked"):
        raise DeviceError(f"{link.port}: badge is not provisioned",
                          hint="run `tracecode flash --skip-image` for it")
    secret = db.secret(bid)
    if secret is None:
        raise DeviceError(f"{link.port}: badge {bid!r} is unknown to this station",
                          hint="it was provisioned by another station database")
    try:
        link.auth(secret)
    except BadgeRefused as exc:
        if exc.code == "auth":
            raise DeviceError(f"{link.port}: badge {bid!r} refused this station: the pairing "
                              "secret does not match") from None
        raise
    return bid


def connect(port: str, *, baudrate: int = 115200, link_factory=None):
    """An open link to the badge on `port`: `open_link` (locked or developer mode) unless a
    `link_factory(port, baudrate=...)` is given (tests)."""
    if link_factory is None:
        return open_link(port, baudrate=baudrate)
    link = link_factory(port, baudrate=baudrate)
    link.open()
    return link


def sync_badge(db: Database, port: str, *, progress: Progress | None = None,
               baudrate: int = 115200, set_clock: bool = True, now: Callable[[], float] = time.time,
               link_factory=None) -> SyncReport:
    """Sync one badge; raises DeviceError on failure (nothing half-committed)."""
    rep = SyncReport(port=port)
    t0 = time.monotonic()
    prog = progress or (lambda *a: None)
    prog("connecting", 0, 0)
    link = connect(port, baudrate=baudrate, link_factory=link_factory)
    rep.protocol = 2 if link.hello.get("proto") == 2 else 1
    session = None
    try:
        rep.badge_id = bid = authenticate(db, link)
        session = rep.session_id = db.start_session(bid, port)
        rep.fw = link.hello.get("fw")
        if set_clock:
            rep.drift_s = link.set_time(int(now()))
        segs = link.segments()
        synced = db.synced_offsets(bid)

        gens = db.segment_generations(bid)
        versions: dict[int, int] = {}
        generations: dict[int, str | None] = {}
        plan = []
        for seg in sorted(segs, key=lambda s: int(s["day"])):
            day, size, acked = int(seg["day"]), int(seg["size"]), int(seg.get("acked", 0))
            versions[day] = version = int(seg.get("v") or 1)
            generations[day] = gen = seg.get("gen")
            end = _record_end(size) if version == 1 else size
            if day in gens and gens[day] != gen:
                # A new log generation (badge erased or re-flashed): the stored offset
                # belongs to the old file; this one is read from its own acknowledgement.
                rep.warnings.append(f"day {day}: new log generation; reading it from the start")
                synced[day] = 0
            start = max(acked, synced.get(day, 0))
            if synced.get(day, 0) > size:
                rep.warnings.append(f"day {day}: badge file shorter than already synced; "
                                    "pulling from its acknowledgement")
                start = acked
            if start < logfmt.HEADER_SIZE:
                start = 0
            plan.append((day, start, end, acked))
        total = sum(max(0, e - s) for _, s, e, _ in plan)
        done = 0

        inflight = 0

        scale = getattr(link, "progress_scale", 0.75)

        def on_data(n):   # per chunk (v1: wire bytes, base64 ~3 payload bytes per 4; v2: payload)
            nonlocal inflight
            inflight += n
            prog("pulling", min(done + int(inflight * scale), total), total)

        # -- pull (nothing is stored until every day is pulled and checked) --
        pulled: dict[int, tuple[int, list[logfmt.Encounter]]] = {}
        wire0 = link.wire_bytes
        tp = time.monotonic()
        for day, start, end, _acked in plan:
            if end <= start:
                continue
            inflight = 0
            data = link.read_range(day, start, end, on_data=on_data)
            rep.payload_bytes += len(data)
            done += len(data)
            prog("pulling", min(done, total), total)
            try:
                parsed = logfmt.parse_segment(
                    data, start, day, versions[day],
                    reread=lambda p, n, d=day: link.read_range(d, p, p + n))
            except ValueError as exc:
                rep.warnings.append(f"day {day}: segment header invalid ({exc}); skipped")
                continue
            rep.crc_errors += parsed.crc_errors
            records, pos = parsed.records, parsed.end
            pulled[day] = (pos, records)
        rep.pull_seconds = time.monotonic() - tp
        rep.pull_wire_bytes = link.wire_bytes - wire0

        # -- commit: one transaction --
        prog("committing", done, total)
        rep.records_new, rep.records_dup = db.commit_pull(bid, session, pulled, generations)

        # -- acknowledge what the database holds --
        prog("acknowledging", done, total)
        stored = db.synced_offsets(bid)
        for day, _start, end, acked in plan:
            off = min(stored.get(day, 0), end)
            if off > acked:
                link.ack(day, off)
                db.mark_acked(bid, day, off)
                rep.acked[str(day)] = off

        # -- health code --
        pending = db.pending_health(bid)
        if pending is not None:
            link.set_health(pending["code"])
            db.mark_health_delivered(pending["id"], session)
            rep.health_set = pending["code"]

        status = link.status()
        rep.battery_pct = status.get("battery_pct")
        rep.battery_mv = status.get("battery_mv")
        rep.flash_free = status.get("flash_free")
        rep.flash_total = status.get("flash_total")
        rep.running = status.get("running")
        rep.fw = status.get("fw", rep.fw)
        db.update_badge_status(bid, status, port=port, synced=True)
        rep.coverage = db.coverage(bid)
        rep.wire_bytes = link.wire_bytes
        rep.rerequests = getattr(link, "rerequests", 0)
        rep.seconds = time.monotonic() - t0
        db.finish_session(session, "ok", drift_s=rep.drift_s, payload_bytes=rep.payload_bytes,
                          wire_bytes=rep.wire_bytes, records_new=rep.records_new,
                          records_dup=rep.records_dup, crc_errors=rep.crc_errors,
                          acked=len(rep.acked))
        rep.ok = True
        prog("done", done, total)
        return rep
    except BaseException as exc:
        if session is not None:
            try:
                db.finish_session(session, "failed", error=str(exc)[:300],
                                  payload_bytes=rep.payload_bytes, wire_bytes=link.wire_bytes)
            except Exception:
                pass
        raise
    finally:
        link.close()
