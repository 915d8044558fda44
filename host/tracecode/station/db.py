"""The sync station's SQLite database (schema and migrations: docs/station.md).

One file, WAL journal, foreign keys on. The schema version is SQLite's `PRAGMA user_version`;
`MIGRATIONS[i]` upgrades version i to i+1 and each runs in its own transaction. Every thread
(parallel sync of several badges) opens its own `Database` on the same path.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import InputError, TraceCodeError
from . import logfmt

HEALTH_CODES = ("green", "yellow", "red")

MIGRATIONS: list[str] = [
    # 0 -> 1: the initial schema.
    """
    CREATE TABLE badges (
        badge_id       TEXT PRIMARY KEY,
        board          TEXT NOT NULL,
        secret         BLOB NOT NULL CHECK (length(secret) = 32),
        provisioned_at INTEGER NOT NULL,
        fw_version     TEXT,
        last_port      TEXT,
        last_sync      INTEGER,
        battery_mv     INTEGER,
        battery_pct    INTEGER,
        flash_free     INTEGER,
        flash_total    INTEGER,
        health_shown   TEXT,
        running        INTEGER,
        log_first      INTEGER,
        log_last       INTEGER,
        diagnosed_at   INTEGER
    );
    CREATE TABLE sync_sessions (
        id           INTEGER PRIMARY KEY,
        badge_id     TEXT NOT NULL REFERENCES badges(badge_id),
        port         TEXT,
        started_at   INTEGER NOT NULL,
        finished_at  INTEGER,
        status       TEXT NOT NULL DEFAULT 'running'
                     CHECK (status IN ('running', 'ok', 'failed')),
        drift_s      REAL,
        payload_bytes INTEGER NOT NULL DEFAULT 0,
        wire_bytes   INTEGER NOT NULL DEFAULT 0,
        records_new  INTEGER NOT NULL DEFAULT 0,
        records_dup  INTEGER NOT NULL DEFAULT 0,
        crc_errors   INTEGER NOT NULL DEFAULT 0,
        acked        INTEGER NOT NULL DEFAULT 0,
        error        TEXT
    );
    CREATE TABLE segments (
        badge_id      TEXT NOT NULL REFERENCES badges(badge_id),
        day           INTEGER NOT NULL,
        synced_offset INTEGER NOT NULL,
        acked_offset  INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (badge_id, day)
    );
    CREATE TABLE encounters (
        id          INTEGER PRIMARY KEY,
        badge_id    TEXT NOT NULL REFERENCES badges(badge_id),
        day         INTEGER NOT NULL,
        offset      INTEGER NOT NULL,
        raw         BLOB NOT NULL CHECK (length(raw) = 32),
        rpi         BLOB NOT NULL,
        aem         BLOB NOT NULL,
        first_seen  INTEGER NOT NULL,
        duration_s  INTEGER NOT NULL,
        sightings   INTEGER NOT NULL,
        rssi_min    INTEGER NOT NULL,
        rssi_max    INTEGER NOT NULL,
        rssi_mean   INTEGER NOT NULL,
        session_id  INTEGER REFERENCES sync_sessions(id),
        UNIQUE (badge_id, day, raw)
    );
    CREATE INDEX encounters_badge_time ON encounters(badge_id, first_seen);
    CREATE TABLE diagnosed_keys (
        id            INTEGER PRIMARY KEY,
        badge_id      TEXT NOT NULL REFERENCES badges(badge_id),
        key_data      BLOB NOT NULL CHECK (length(key_data) = 16),
        rolling_start_interval_number INTEGER NOT NULL,
        rolling_period INTEGER NOT NULL,
        report_type   INTEGER NOT NULL,
        days_since_onset_of_symptoms INTEGER,
        exported_at   INTEGER NOT NULL,
        destination   TEXT,
        UNIQUE (badge_id, key_data)
    );
    CREATE TABLE matches (
        id          INTEGER PRIMARY KEY,
        badge_id    TEXT NOT NULL REFERENCES badges(badge_id),
        matched_at  INTEGER NOT NULL,
        health_code TEXT NOT NULL CHECK (health_code IN ('green', 'yellow', 'red')),
        exposures   INTEGER NOT NULL,
        detail      TEXT NOT NULL
    );
    CREATE TABLE health_codes (
        id           INTEGER PRIMARY KEY,
        badge_id     TEXT NOT NULL REFERENCES badges(badge_id),
        code         TEXT NOT NULL CHECK (code IN ('green', 'yellow', 'red')),
        reason       TEXT NOT NULL DEFAULT '',
        created_at   INTEGER NOT NULL,
        delivered_at INTEGER,
        session_id   INTEGER REFERENCES sync_sessions(id)
    );
    CREATE INDEX health_codes_badge ON health_codes(badge_id, id);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def default_path() -> Path:
    """`$TRACECODE_DB`, else ./tracecode.sqlite."""
    return Path(os.environ.get("TRACECODE_DB", "tracecode.sqlite"))


class Database:
    """The station database. Use as a context manager or call `close()`."""

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise InputError(f"no station database at {self.path}",
                             hint="run `tracecode flash` first or pass --db")
        if create and not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The file holds pairing secrets: readable by its owner only.
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path} is not a station database ({exc})") from None
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.row_factory = sqlite3.Row
        self.migrate()

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise TraceCodeError(
                f"{self.path} has schema version {version}, newer than this tracecode "
                f"({SCHEMA_VERSION})", hint="upgrade tracecode")
        while version < SCHEMA_VERSION:
            with self.transaction() as c:
                for stmt in _split_sql(MIGRATIONS[version]):
                    c.execute(stmt)
                c.execute(f"PRAGMA user_version = {version + 1}")
            version += 1

    # -- badges ---------------------------------------------------------------------------
    def add_badge(self, badge_id: str, board: str, secret: bytes, *, fw_version: str | None = None,
                  port: str | None = None) -> None:
        """Register (or re-provision) a badge with its pairing secret."""
        now = int(time.time())
        with self.transaction() as c:
            c.execute(
                """INSERT INTO badges (badge_id, board, secret, provisioned_at, fw_version, last_port)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(badge_id) DO UPDATE SET board=excluded.board,
                     secret=excluded.secret, provisioned_at=excluded.provisioned_at,
                     fw_version=excluded.fw_version, last_port=excluded.last_port""",
                (badge_id, board, bytes(secret), now, fw_version, port))

    def badge(self, badge_id: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM badges WHERE badge_id=?", (badge_id,)).fetchone()

    def badges(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM badges ORDER BY badge_id").fetchall()

    def secret(self, badge_id: str) -> bytes | None:
        row = self.conn.execute("SELECT secret FROM badges WHERE badge_id=?",
                                (badge_id,)).fetchone()
        return bytes(row[0]) if row else None

    def update_badge_status(self, badge_id: str, status: dict, *, port: str | None = None,
                            synced: bool = False) -> None:
        log = status.get("log") or {}
        fields = {
            "fw_version": status.get("fw"),
            "battery_mv": status.get("battery_mv"),
            "battery_pct": status.get("battery_pct"),
            "flash_free": status.get("flash_free"),
            "flash_total": status.get("flash_total"),
            "health_shown": status.get("health"),
            "running": None if status.get("running") is None else int(bool(status["running"])),
            "last_port": port,
        }
        if synced:
            fields["last_sync"] = int(time.time())
        fields = {k: v for k, v in fields.items() if v is not None}
        if not fields:
            return
        sets = ", ".join(f"{k}=?" for k in fields)
        with self.transaction() as c:
            c.execute(f"UPDATE badges SET {sets} WHERE badge_id=?", (*fields.values(), badge_id))
            if log:
                c.execute(
                    """UPDATE badges SET log_first = (SELECT min(first_seen) FROM encounters
                         WHERE badge_id=?), log_last = (SELECT max(first_seen + duration_s)
                         FROM encounters WHERE badge_id=?) WHERE badge_id=?""",
                    (badge_id, badge_id, badge_id))

    # -- sync sessions and segments -----------------------------------------------------------
    def start_session(self, badge_id: str, port: str) -> int:
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO sync_sessions (badge_id, port, started_at) VALUES (?, ?, ?)",
                (badge_id, port, int(time.time())))
            return int(cur.lastrowid)

    def finish_session(self, session_id: int, status: str, **fields) -> None:
        fields = dict(fields, status=status, finished_at=int(time.time()))
        sets = ", ".join(f"{k}=?" for k in fields)
        with self.transaction() as c:
            c.execute(f"UPDATE sync_sessions SET {sets} WHERE id=?", (*fields.values(), session_id))

    def sessions(self, badge_id: str | None = None) -> list[sqlite3.Row]:
        if badge_id is None:
            return self.conn.execute("SELECT * FROM sync_sessions ORDER BY id").fetchall()
        return self.conn.execute("SELECT * FROM sync_sessions WHERE badge_id=? ORDER BY id",
                                 (badge_id,)).fetchall()

    def synced_offsets(self, badge_id: str) -> dict[int, int]:
        rows = self.conn.execute("SELECT day, synced_offset FROM segments WHERE badge_id=?",
                                 (badge_id,))
        return {r[0]: r[1] for r in rows}

    def commit_pull(self, badge_id: str, session_id: int,
                    pulled: dict[int, tuple[int, list[logfmt.Encounter]]]) -> tuple[int, int]:
        """Store pulled records and the new synced offset of each day in ONE transaction.

        `pulled` maps day -> (new synced offset, records). Returns (new, duplicates).
        """
        new = dup = 0
        with self.transaction() as c:
            for day, (offset, records) in sorted(pulled.items()):
                for e in records:
                    cur = c.execute(
                        """INSERT INTO encounters (badge_id, day, offset, raw, rpi, aem,
                             first_seen, duration_s, sightings, rssi_min, rssi_max, rssi_mean,
                             session_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)
                           ON CONFLICT (badge_id, day, raw) DO NOTHING""",
                        (badge_id, day, e.offset, e.raw, e.rpi, e.aem, e.first_seen, e.duration_s,
                         e.count, e.rssi_min, e.rssi_max, e.rssi_mean, session_id))
                    if cur.rowcount:
                        new += 1
                    else:
                        dup += 1
                c.execute(
                    """INSERT INTO segments (badge_id, day, synced_offset) VALUES (?, ?, ?)
                       ON CONFLICT(badge_id, day) DO UPDATE SET
                         synced_offset = max(synced_offset, excluded.synced_offset)""",
                    (badge_id, day, offset))
        return new, dup

    def mark_acked(self, badge_id: str, day: int, offset: int) -> None:
        with self.transaction() as c:
            c.execute("UPDATE segments SET acked_offset = max(acked_offset, ?) "
                      "WHERE badge_id=? AND day=?", (offset, badge_id, day))

    # -- encounters -------------------------------------------------------------------------
    def encounter_count(self, badge_id: str | None = None) -> int:
        if badge_id is None:
            return self.conn.execute("SELECT count(*) FROM encounters").fetchone()[0]
        return self.conn.execute("SELECT count(*) FROM encounters WHERE badge_id=?",
                                 (badge_id,)).fetchone()[0]

    def encounters(self, badge_id: str) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT * FROM encounters WHERE badge_id=? ORDER BY first_seen, day, offset",
            (badge_id,)).fetchall()

    def sightings(self, badge_id: str) -> list:
        """The badge's synced encounters as `tracecode.matcher.Sighting`s, oldest first.

        One record (one RPI aggregated over one scan) gives one sighting at its first-seen
        time, with the scan's mean RSSI and its strongest reading (`rssi_max`).
        """
        from ..matcher import Sighting  # the lead's matcher owns the type

        return [Sighting(r["first_seen"], bytes(r["rpi"]), bytes(r["aem"]), r["rssi_mean"],
                         rssi_max=r["rssi_max"])
                for r in self.encounters(badge_id)]

    def coverage(self, badge_id: str, gap_s: int = 3 * 3600) -> dict:
        """First/last synced encounter and gaps longer than `gap_s` between encounters."""
        times = [r[0] for r in self.conn.execute(
            "SELECT first_seen FROM encounters WHERE badge_id=? ORDER BY first_seen", (badge_id,))]
        gaps = [[a, b] for a, b in zip(times, times[1:]) if b - a > gap_s]
        return {"records": len(times), "first": times[0] if times else None,
                "last": times[-1] if times else None, "gaps": gaps}

    # -- diagnosis keys -----------------------------------------------------------------------
    def store_diagnosed_keys(self, badge_id: str, keys: Iterable, destination: str) -> int:
        """Store the consenting wearer's own TEKs (`tracecode.export.DiagnosisKey`s)."""
        now = int(time.time())
        n = 0
        with self.transaction() as c:
            for k in keys:
                cur = c.execute(
                    """INSERT INTO diagnosed_keys (badge_id, key_data,
                         rolling_start_interval_number, rolling_period, report_type,
                         days_since_onset_of_symptoms, exported_at, destination)
                       VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (badge_id, key_data) DO NOTHING""",
                    (badge_id, bytes(k.key_data), k.rolling_start_interval_number,
                     k.rolling_period, k.report_type, k.days_since_onset_of_symptoms, now,
                     destination))
                n += cur.rowcount
            c.execute("UPDATE badges SET diagnosed_at=? WHERE badge_id=?", (now, badge_id))
        return n

    def diagnosed_keys(self, badge_id: str | None = None) -> list[sqlite3.Row]:
        if badge_id is None:
            return self.conn.execute("SELECT * FROM diagnosed_keys ORDER BY id").fetchall()
        return self.conn.execute("SELECT * FROM diagnosed_keys WHERE badge_id=? ORDER BY id",
                                 (badge_id,)).fetchall()

    # -- matches and health codes ----------------------------------------------------------------
    def set_health_code(self, badge_id: str, code: str, reason: str = "") -> int:
        """Queue a health code; the next sync of that badge writes it to the badge."""
        if code not in HEALTH_CODES:
            raise InputError(f"unknown health code {code!r} (expected green, yellow or red)")
        if self.badge(badge_id) is None:
            raise InputError(f"unknown badge {badge_id!r}")
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO health_codes (badge_id, code, reason, created_at) VALUES (?,?,?,?)",
                (badge_id, code, reason, int(time.time())))
            return int(cur.lastrowid)

    def pending_health(self, badge_id: str) -> sqlite3.Row | None:
        """The newest health code not yet written to the badge, or None."""
        row = self.conn.execute(
            "SELECT * FROM health_codes WHERE badge_id=? ORDER BY id DESC LIMIT 1",
            (badge_id,)).fetchone()
        if row is None or row["delivered_at"] is not None:
            return None
        return row

    def current_health(self, badge_id: str) -> sqlite3.Row | None:
        return self.conn.execute(
            "SELECT * FROM health_codes WHERE badge_id=? ORDER BY id DESC LIMIT 1",
            (badge_id,)).fetchone()

    def mark_health_delivered(self, health_id: int, session_id: int | None) -> None:
        with self.transaction() as c:
            c.execute("UPDATE health_codes SET delivered_at=?, session_id=? WHERE id=?",
                      (int(time.time()), session_id, health_id))

    def record_match(self, badge_id: str, result, reason: str | None = None) -> int:
        """Store one `tracecode.matcher.MatchResult` for a badge and queue its health code."""
        exposures = list(getattr(result, "exposures", []) or [])
        code = getattr(result, "health_code")
        detail = json.dumps([_jsonable(e) for e in exposures], default=_json_default)
        with self.transaction() as c:
            c.execute(
                "INSERT INTO matches (badge_id, matched_at, health_code, exposures, detail) "
                "VALUES (?,?,?,?,?)", (badge_id, int(time.time()), code, len(exposures), detail))
        current = self.current_health(badge_id)
        if current is not None and current["code"] == code:
            return int(current["id"])   # unchanged: nothing new to deliver
        return self.set_health_code(
            badge_id, code, reason or f"match: {len(exposures)} exposure window(s)")

    def matches(self, badge_id: str | None = None) -> list[sqlite3.Row]:
        if badge_id is None:
            return self.conn.execute("SELECT * FROM matches ORDER BY id").fetchall()
        return self.conn.execute("SELECT * FROM matches WHERE badge_id=? ORDER BY id",
                                 (badge_id,)).fetchall()

    # -- checks ---------------------------------------------------------------------------------
    def check(self) -> dict:
        """Integrity check: SQLite pages, foreign keys, every record's CRC, schema version."""
        integrity = [r[0] for r in self.conn.execute("PRAGMA integrity_check")]
        fk = self.conn.execute("PRAGMA foreign_key_check").fetchall()
        bad = []
        n = 0
        for row in self.conn.execute("SELECT id, badge_id, day, offset, raw FROM encounters"):
            n += 1
            if not logfmt.crc_ok(bytes(row["raw"])):
                bad.append({"id": row["id"], "badge": row["badge_id"], "day": row["day"],
                            "offset": row["offset"]})
        version = self.schema_version
        ok = integrity == ["ok"] and not fk and not bad and version == SCHEMA_VERSION
        return {"ok": ok, "schema_version": version, "expected_schema_version": SCHEMA_VERSION,
                "integrity": integrity, "foreign_key_violations": len(fk),
                "records": n, "bad_crc": bad}


def _split_sql(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _jsonable(obj):
    if hasattr(obj, "to_json"):
        return obj.to_json()
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if hasattr(obj, "_asdict"):
        return obj._asdict()
    if isinstance(obj, dict):
        return obj
    return repr(obj)


def _json_default(obj):
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).hex()
    return repr(obj)
