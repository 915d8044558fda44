"""Sync station: flash, provision, sync, diagnose and health codes for badges on USB serial.

Modules: `db` (SQLite store), `ports` (finding badges), `link` (raw-REPL session with the
badge's host interface over mpremote's transport), `logfmt` (encounter log records),
`flasher` (esptool + file install + provisioning), `sync`, `diagnose`, `cli`.
"""
