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
from urllib.parse import quote
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
    # 1 -> 2: per synced day, how many record slots hold no row (bad CRC, unknown type,
    # duplicates) as of the last commit; a later shortfall beyond it means lost rows.
    """
    ALTER TABLE segments ADD COLUMN skipped INTEGER NOT NULL DEFAULT 0;
    UPDATE segments SET skipped = max(0, (synced_offset - 16) / 32 - (SELECT count(*)
        FROM encounters e WHERE e.badge_id = segments.badge_id AND e.day = segments.day));
    """,
    # 2 -> 3: the log generation of each synced segment (log format v2: a badge erased or
    # re-flashed writes new files with a new random generation; NULL for v1 segments).
    """
    ALTER TABLE segments ADD COLUMN generation TEXT;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def default_path() -> Path:
    """`$TRACECODE_DB`, else ./tracecode.sqlite."""
    return Path(os.environ.get("TRACECODE_DB", "tracecode.sqlite"))


SQLITE_MAGIC = b"SQLite format 3\x00"
TABLES = ("badges", "sync_sessions", "segments", "encounters", "diagnosed_keys", "matches",
          "health_codes")
RECOVERY_HINT = ("keep the file for inspection; `tracecode db recover --db {path} --out NEW` "
                 "salvages its pairing secrets and intact records, then sync every badge "
                 "(badges keep what was not acknowledged): docs/station.md, "
                 "\"Recovering a damaged database\"")

NO_SALVAGE = ("nothing in it can be salvaged: restore the newest `tracecode db backup` copy, "
              "then sync every badge; docs/station.md, \"Recovering a damaged database\"")


class DatabaseDamaged(InputError):
    """The station database is damaged or is not a station database (exit 2)."""

    def __init__(self, path: Path, what: str, hint: str | None = None):
        super().__init__(f"station database {path} is damaged: {what}",
                         hint=hint or RECOVERY_HINT.format(path=path))
        self.path = path


def _one_line(rows: list[str], limit: int = 3) -> str:
    lines = [ln.strip() for r in rows for ln in str(r).splitlines()
             if ln.strip() and not ln.startswith("*** in database")]
    return "; ".join(lines[:limit]) + ("; ..." if len(lines) > limit else "")


def _strict_text(path: Path):
    def decode(b: bytes) -> str:
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise DatabaseDamaged(path, "a text column is not valid UTF-8") from None
    return decode


class Database:
    """The station database. Use as a context manager or call `close()`.

    `create=True` makes a new database when the file does not exist (the CLI does so only for
    `tracecode flash` and `tracecode db init`); an existing file must be a station database
    that passes SQLite's `quick_check` and the row accounting (`accounting()`), else
    `DatabaseDamaged` (an `InputError`, exit 2) is raised and the file is left untouched.
    `check="none"` skips the checks (for `db check`, which reports instead of refusing).
    """

    def __init__(self, path: str | Path, *, create: bool = True, check: str = "quick",
                 backup_before_migrate: bool = True, readonly: bool = False):
        self.path = Path(path)
        fresh = not self.path.exists()
        if fresh and not create:
            raise InputError(f"no station database at {self.path}",
                             hint="run `tracecode db init` or `tracecode flash` to create one, "
                                  "or pass --db PATH / set $TRACECODE_DB")
        if fresh:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The file holds pairing secrets: readable by its owner only.
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
        elif self.path.is_dir():
            raise InputError(f"{self.path} is a folder, not a station database")
        else:
            try:
                with open(self.path, "rb") as f:
                    head = f.read(100)
            except OSError as exc:
                raise InputError(f"cannot read station database {self.path}: {exc.strerror}") from None
            if len(head) == 0:
                raise DatabaseDamaged(self.path, "the file is empty (0 bytes)", NO_SALVAGE)
            if head[:16] != SQLITE_MAGIC or len(head) < 100:
                raise DatabaseDamaged(self.path, "not an SQLite database (bad file header)",
                                      NO_SALVAGE)
        try:
            mode = "ro" if readonly and not fresh else "rw"
            self.conn = sqlite3.connect(f"file:{quote(str(self.path.resolve()))}?mode={mode}",
                                        uri=True, timeout=30, isolation_level=None,
                                        check_same_thread=False)
            self.conn.text_factory = _strict_text(self.path)
            self.conn.row_factory = sqlite3.Row
            if not fresh and check != "none":
                self._quick_check()
            if readonly and not fresh:
                return
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.execute("PRAGMA synchronous=FULL")
            version = self.schema_version
            if not fresh and check != "none":
                self._check_schema(version)
            if version > 0 and version < SCHEMA_VERSION and backup_before_migrate:
                self.backup(self.path.with_name(
                    f"{self.path.name}.v{version}-{time.strftime('%Y%m%dT%H%M%S')}.bak"))
            self.migrate()
            if not fresh and check != "none":
                bad = self.accounting()
                if bad:
                    raise DatabaseDamaged(self.path, bad[0] + (
                        f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            self._close_quietly()
            raise DatabaseDamaged(self.path, _one_line([str(exc)])) from None
        except BaseException:
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _quick_check(self) -> None:
        rows = [r[0] for r in self.conn.execute("PRAGMA quick_check(5)")]
        if rows != ["ok"]:
            raise DatabaseDamaged(self.path, "SQLite quick_check: " + _one_line(rows))
        # quick_check does not compare indexes with their tables: per value of its leading
        # column, every index must count as many entries as its table has rows (one index
        # scan and one table scan each).
        for (table,) in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
                ).fetchall():
            for (index,) in self.conn.execute(
                    "SELECT name FROM pragma_index_list(?)", (table,)).fetchall():
                col = self.conn.execute("SELECT name FROM pragma_index_info(?) WHERE seqno=0",
                                        (index,)).fetchone()
                if not col or not col[0]:
                    continue
                q = f'SELECT "{col[0]}", count(*) FROM "{table}" %s GROUP BY 1 ORDER BY 1'
                by_table = self.conn.execute(q % "NOT INDEXED").fetchall()
                by_index = self.conn.execute(q % f'INDEXED BY "{index}"').fetchall()
                if [tuple(r) for r in by_table] != [tuple(r) for r in by_index]:
                    raise DatabaseDamaged(self.path, f"index {index} disagrees with table "
                                                     f"{table}")

    def _check_schema(self, version: int) -> None:
        names = {r[0] for r in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        if version == 0:
            if names:
                raise DatabaseDamaged(self.path, "not a station database (schema version 0 "
                                                 "with tables: " + ", ".join(sorted(names)[:5]) + ")")
            return
        if version <= SCHEMA_VERSION:
            missing = [t for t in TABLES if t not in names]
            if missing:
                raise DatabaseDamaged(self.path, "missing table(s) " + ", ".join(missing))

    def accounting(self) -> list[str]:
        """Rows the database says it holds but does not: every synced day's record slots
        (32-byte records after the 16-byte header, up to its synced offset) hold a row, except
        the `skipped` ones counted at commit time. One pass over an index: cheap enough for
        every open."""
        problems = []
        for bid, day, synced, skipped, n in self.conn.execute(
                """SELECT s.badge_id, s.day, s.synced_offset, s.skipped, (SELECT count(*)
                     FROM encounters e WHERE e.badge_id = s.badge_id AND e.day = s.day)
                   FROM segments s ORDER BY s.badge_id, s.day"""):
            slots = max(0, (synced - logfmt.HEADER_SIZE) // logfmt.RECORD_SIZE)
            if slots - n > skipped:
                problems.append(f"badge {bid} day {day}: {slots - n - skipped} synced "
                                f"encounter row(s) missing")
        return problems

    def backup(self, dest: str | Path) -> Path:
        """A consistent copy through SQLite's online backup API (safe while others write)."""
        dest = Path(dest)
        if dest.exists():
            raise InputError(f"{dest} exists; choose another backup file")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        out = sqlite3.connect(str(dest))
        try:
            self.conn.backup(out)
        finally:
            out.close()
        return dest

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

    def segment_generations(self, badge_id: str) -> dict[int, str | None]:
        rows = self.conn.execute("SELECT day, generation FROM segments WHERE badge_id=?",
                                 (badge_id,))
        return {r[0]: r[1] for r in rows}

    def commit_pull(self, badge_id: str, session_id: int,
                    pulled: dict[int, tuple[int, list[logfmt.Encounter]]],
                    generations: dict[int, str | None] | None = None) -> tuple[int, int]:
        """Store pulled records and the new synced offset of each day in ONE transaction.

        `pulled` maps day -> (new synced offset, records); `generations` the badge's log
        generation of each day: a different one than stored replaces the day's offsets
        (a new file) instead of keeping the larger. Returns (new, duplicates).
        """
        generations = generations or {}
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
                    """INSERT INTO segments (badge_id, day, synced_offset, generation)
                       VALUES (?, ?, ?, ?)
                       ON CONFLICT(badge_id, day) DO UPDATE SET
                         synced_offset = CASE WHEN generation IS excluded.generation
                           THEN max(synced_offset, excluded.synced_offset)
                           ELSE excluded.synced_offset END,
                         acked_offset = CASE WHEN generation IS excluded.generation
                           THEN acked_offset ELSE 0 END,
                         generation = excluded.generation""",
                    (badge_id, day, offset, generations.get(day)))
                c.execute(
                    """UPDATE segments SET skipped = max(0, (synced_offset - ?) / ? - (SELECT
                         count(*) FROM encounters e WHERE e.badge_id = segments.badge_id
                         AND e.day = segments.day)) WHERE badge_id = ? AND day = ?""",
                    (logfmt.HEADER_SIZE, logfmt.RECORD_SIZE, badge_id, day))
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

    def sighting_table(self, badge_id: str):
        """`sightings` as a `tracecode.matcher.SightingTable` (columns, for `match --db`)."""
        from ..matcher import SightingTable

        cur = self.conn.cursor()
        cur.row_factory = None
        cur.execute("SELECT first_seen, rpi, aem, rssi_mean, rssi_max FROM encounters WHERE badge_id=?"
                    " ORDER BY first_seen, day, offset", (badge_id,))
        t, rpi, aem, rssi, mx = [], [], [], [], []
        for row in cur:  # (a v2 row's RPI is its 8-byte prefix: zero-padded, as the matcher wants)
            t.append(row[0]); rpi.append(bytes(row[1]).ljust(16, b"\0")); aem.append(bytes(row[2])); rssi.append(row[3])
            mx.append(row[4])
        return SightingTable(t, b"".join(rpi), b"".join(aem), rssi, [m or 0 for m in mx],
                             [m is not None for m in mx])

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
    DERIVED = ("rpi", "aem", "first_seen", "duration_s", "sightings", "rssi_min", "rssi_max",
               "rssi_mean")

    def check(self) -> dict:
        """Full check (`tracecode db check`): SQLite's integrity_check, foreign keys, schema,
        every record's CRC, every column derived from a record re-derived from its raw bytes,
        and the row accounting. Never raises for damage: it is reported in the result."""
        rep: dict = {"ok": False, "path": str(self.path), "schema_version": None,
                     "expected_schema_version": SCHEMA_VERSION, "integrity": [],
                     "foreign_key_violations": 0, "records": 0, "bad_crc": [],
                     "bad_derived": [], "missing_rows": [], "errors": []}

        def step(name, fn):
            try:
                fn()
            except (sqlite3.DatabaseError, DatabaseDamaged, UnicodeDecodeError) as exc:
                rep["errors"].append(f"{name}: {exc}")

        def integrity():
            rep["integrity"] = [r[0] for r in self.conn.execute("PRAGMA integrity_check(20)")]

        def version():
            rep["schema_version"] = self.schema_version

        def fks():
            rep["foreign_key_violations"] = len(self.conn.execute(
                "PRAGMA foreign_key_check").fetchall())

        def records():
            cols = ", ".join(self.DERIVED)
            for row in self.conn.execute(
                    f"SELECT id, badge_id, day, offset, raw, {cols} FROM encounters ORDER BY id"):
                rep["records"] += 1
                where = {"id": row["id"], "badge": row["badge_id"], "day": row["day"],
                         "offset": row["offset"]}
                raw = row["raw"]
                if not isinstance(raw, bytes) or not logfmt.crc_ok(raw):
                    rep["bad_crc"].append(where)
                    continue
                try:
                    e = logfmt.decode_record(raw, row["day"], row["offset"])
                except (ValueError, TypeError):
                    rep["bad_crc"].append(where)
                    continue
                want = {"rpi": e.rpi, "aem": e.aem, "first_seen": e.first_seen,
                        "duration_s": e.duration_s, "sightings": e.count,
                        "rssi_min": e.rssi_min, "rssi_max": e.rssi_max, "rssi_mean": e.rssi_mean}
                got = {k: (bytes(row[k]) if isinstance(row[k], (bytes, memoryview)) else row[k])
                       for k in self.DERIVED}
                diff = sorted(k for k in self.DERIVED if got[k] != want[k])
                if diff:
                    rep["bad_derived"].append(dict(where, columns=diff))

        def accounting():
            rep["missing_rows"] = self.accounting()

        for name, fn in (("integrity_check", integrity), ("schema", version),
                         ("foreign_key_check", fks), ("records", records),
                         ("accounting", accounting)):
            step(name, fn)
        rep["ok"] = (rep["integrity"] == ["ok"] and not rep["errors"]
                     and rep["foreign_key_violations"] == 0 and not rep["bad_crc"]
                     and not rep["bad_derived"] and not rep["missing_rows"]
                     and rep["schema_version"] == SCHEMA_VERSION)
        return rep


def recover(src: str | Path, dest: str | Path) -> dict:
    """Salvage a damaged station database into a new one at `dest`.

    Every readable row is copied (row by row, skipping what SQLite cannot read); encounter
    rows only when their raw record passes its CRC, with every derived column re-derived from
    it. Each synced day's synced offset is lowered to what the badge acknowledged, so the
    next sync pulls again everything the badge still holds; only records that were both
    acknowledged by a badge and lost from the damaged file are gone (counted in the result).
    """
    src, dest = Path(src), Path(dest)
    if not src.is_file():
        raise InputError(f"no database file at {src}")
    if dest.exists():
        raise InputError(f"{dest} exists; recover into a new file")
    with open(src, "rb") as f:
        if f.read(16) != SQLITE_MAGIC:
            raise InputError(f"{src} is not an SQLite database at all (bad or empty header); "
                             "nothing to salvage", hint="restore a `tracecode db backup` copy")
    conn = sqlite3.connect(f"file:{quote(str(src.resolve()))}?mode=ro", uri=True)
    conn.text_factory = _strict_text(src)
    conn.row_factory = sqlite3.Row
    out = {"source": str(src), "database": str(dest), "tables": {}, "unreadable": {},
           "bad_records": 0, "acknowledged_records_lost": 0}
    try:
        salvaged = {t: _salvage(conn, t) for t in TABLES}
    finally:
        conn.close()
    with Database(dest, create=True) as db:
        c = db.conn
        cols = {t: [r[1] for r in c.execute(f"PRAGMA table_info({t})")] for t in TABLES}
        c.execute("PRAGMA foreign_keys=OFF")
        c.execute("BEGIN IMMEDIATE")
        badges = set()
        for t in ("badges", "sync_sessions", "segments", "encounters", "diagnosed_keys",
                  "matches", "health_codes"):
            rows, unreadable = salvaged[t]
            kept = 0
            for r in rows:
                d = {k: r[k] for k in r.keys() if k in cols[t]}
                if t != "badges" and d.get("badge_id") not in badges:
                    continue
                if t == "encounters":
                    raw = d.get("raw")
                    if not isinstance(raw, bytes) or not logfmt.crc_ok(raw):
                        out["bad_records"] += 1
                        continue
                    try:
                        e = logfmt.decode_record(raw, int(d["day"]), int(d["offset"]))
                    except (ValueError, TypeError):
                        out["bad_records"] += 1
                        continue
                    d.update(rpi=e.rpi, aem=e.aem, first_seen=e.first_seen,
                             duration_s=e.duration_s, sightings=e.count, rssi_min=e.rssi_min,
                             rssi_max=e.rssi_max, rssi_mean=e.rssi_mean)
                try:
                    c.execute(f"INSERT INTO {t} ({', '.join(d)}) VALUES "
                              f"({', '.join('?' * len(d))})", tuple(d.values()))
                except sqlite3.IntegrityError:
                    continue
                kept += 1
                if t == "badges":
                    badges.add(d["badge_id"])
            out["tables"][t] = kept
            if unreadable:
                out["unreadable"][t] = unreadable
        # what the badges acknowledged but the file lost cannot come back; the rest will
        for bid, day, acked, n in c.execute(
                """SELECT s.badge_id, s.day, s.acked_offset, (SELECT count(*) FROM encounters e
                     WHERE e.badge_id = s.badge_id AND e.day = s.day AND e.offset < s.acked_offset)
                   FROM segments s""").fetchall():
            slots = max(0, (acked - logfmt.HEADER_SIZE) // logfmt.RECORD_SIZE)
            out["acknowledged_records_lost"] += max(0, slots - n)
        c.execute("UPDATE segments SET synced_offset = acked_offset")
        c.execute("""UPDATE segments SET skipped = max(0, (synced_offset - 16) / 32 - (SELECT
                       count(*) FROM encounters e WHERE e.badge_id = segments.badge_id
                       AND e.day = segments.day AND e.offset < segments.synced_offset))""")
        c.execute("COMMIT")
        c.execute("PRAGMA foreign_keys=ON")
    return out


def _salvage(conn: sqlite3.Connection, table: str) -> tuple[list, int]:
    """Every row of `table` SQLite can still read, in rowid order, and how many it could not
    (rows it skipped one by one, plus one per damaged stretch it had to jump over)."""
    rows: list = []
    unreadable = 0
    last = -(1 << 63)
    for _ in range(100_000):   # bounded: each round reads on or skips past something
        try:
            for r in conn.execute(f"SELECT rowid AS _rowid_, * FROM {table} WHERE rowid > ? "
                                  "ORDER BY rowid", (last,)):
                rows.append(r)
                last = r["_rowid_"]
            return rows, unreadable
        except (sqlite3.DatabaseError, DatabaseDamaged, UnicodeDecodeError):
            pass
        unreadable += 1
        try:   # the next row id, read without its (maybe undecodable) columns
            nxt = conn.execute(f"SELECT rowid FROM {table} WHERE rowid > ? ORDER BY rowid "
                               "LIMIT 1", (last,)).fetchone()
        except (sqlite3.DatabaseError, UnicodeDecodeError):
            nxt = None
            step = 1
            while step < (1 << 62):   # jump over the damaged stretch
                try:
                    conn.execute(f"SELECT rowid FROM {table} WHERE rowid > ? ORDER BY rowid "
                                 "LIMIT 1", (last + step,)).fetchone()
                    break
                except (sqlite3.DatabaseError, UnicodeDecodeError):
                    step *= 2
            last += step
            if step >= (1 << 62):
                return rows, unreadable
            continue
        if nxt is None:
            return rows, unreadable
        last = nxt[0]   # that row itself failed to read: skip it
    return rows, unreadable


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
