"""`tracecode demo`: the main job on its embedded default.

By default the full pipeline runs (`tracecode.e2e.demo`: a fleet of virtual badges, a local key
server and SQLite, a scenario end to end). `--host-only` runs the host half alone: three
badges' identifiers are derived, one badge's wearer is diagnosed, a signed export batch is
written, and the other badges' sighting logs are matched against it.
"""

from __future__ import annotations

import argparse
import builtins
import random
import sys
import tempfile
import time
from pathlib import Path

from . import en, export
from .errors import TraceCodeError
from .matcher import Sighting, evaluate, write_sightings_csv


def _host_only_demo(workdir: Path, seed: int, as_json: bool = False) -> int:
    rng = random.Random(seed)
    # With --json the narration goes to stderr and stdout holds one JSON document.
    out = sys.stderr if as_json else sys.stdout

    def print(*a, **kw):   # noqa: A001 - the narration below stays readable as print()
        builtins.print(*a, file=out, **kw)

    day0 = (int(time.time()) // 86400 - 2) * 86400
    rsin = en.enin(day0)
    tx = -4
    meta = en.encode_metadata(tx, 1)
    badges = {name: rng.randbytes(16) for name in ("alice", "bob", "carol")}
    print(f"1. three badges make daily keys for {time.strftime('%Y-%m-%d', time.gmtime(day0))} (UTC)")

    def heard(src: str, minutes: range, rssi: int) -> list[Sighting]:
        tek = badges[src]
        out = []
        for m in minutes:
            t = day0 + 9 * 3600 + 60 * m
            i = en.enin(t)
            r = en.rpi(en.rpik(tek), i)
            out.append(Sighting(t, r, en.aem(en.aemk(tek), r, meta), rssi + rng.randint(-3, 3)))
        return out

    logs = {
        # bob sat next to alice for 40 minutes; carol passed alice in a corridor for 3.
        "bob": heard("alice", range(0, 40), -55),
        "carol": heard("alice", range(60, 63), -80),
    }
    for name, log in logs.items():
        for _ in range(300):  # strangers' identifiers
            log.append(Sighting(day0 + rng.randrange(86400), rng.randbytes(16), rng.randbytes(4), -85))
        write_sightings_csv(workdir / f"{name}.csv", log)
    print(f"2. bob's and carol's badges logged {len(logs['bob'])} and {len(logs['carol'])} sightings")

    priv, pub = export.generate_signing_key(workdir / "keys")
    keys = [export.DiagnosisKey(badges["alice"], rsin, 144, 1, 0, 1)]
    keys += [export.DiagnosisKey(rng.randbytes(16), rsin - 144 * d) for d in range(1, 14)]  # others' keys
    batch = export.write_batch(
        workdir / "exports" / f"{day0}-{day0 + 86400}-00001.zip", keys, signing_key=priv,
        start_timestamp=day0, end_timestamp=day0 + 86400,
    )
    export.write_index(workdir, [str(batch.relative_to(workdir))])
    print(f"3. alice is diagnosed: a signed batch of {len(keys)} keys -> {batch}")

    loaded = export.load_batch(batch, pubkeys=[pub])
    print(f"4. batch signature: {loaded.signature}; matching each badge's log")
    codes = {"alice": "red"}
    minutes = {}
    for name in logs:
        res = evaluate(loaded.keys, logs[name], jobs=1)
        codes[name] = res.health_code
        mins = minutes[name] = sum(w.to_json()["duration_s"] for w in res.windows) // 60
        print(f"   {name:6s} {len(res.matches):3d} matched sightings, {mins:3d} exposure minutes -> {res.health_code}")
    print("5. health codes: " + ", ".join(f"{n} {c}" for n, c in codes.items()))
    if codes != {"alice": "red", "bob": "red", "carol": "green"}:
        raise TraceCodeError(f"demo produced unexpected health codes {codes}")
    if as_json:
        from .cli import print_json
        print_json({"day": day0, "batch": str(batch), "signature": loaded.signature,
                    "keys": len(keys), "sightings": {n: len(v) for n, v in logs.items()},
                    "exposure_minutes": minutes, "health_codes": codes})
    return 0


def cmd_demo(args) -> int:
    if not args.host_only:
        from .e2e import demo as full_demo

        return full_demo.run(args)
    if args.workdir:
        wd = Path(args.workdir)
        wd.mkdir(parents=True, exist_ok=True)
        return _host_only_demo(wd, args.seed, args.json)
    with tempfile.TemporaryDirectory(prefix="tracecode-demo-") as d:
        return _host_only_demo(Path(d), args.seed, args.json)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on its embedded default, end to end")
    p.add_argument("--workdir", help="where the demo's files and report go (default: out/demo; "
                                     "--host-only: a temporary folder)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--host-only", action="store_true", help="only the host half: keys, export, match")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)
