"""The shared radio medium: positions over time, path loss, and what a scan window hears.

Fidelity (documented in docs/sim.md): adverts are not simulated one by one. When a scanner's
window slice ends (at most `slice_s` seconds of scanning), the medium computes for every
advertising segment (one address + payload + interval) that overlapped the slice how many
adverts the scanner would have caught: overlap / adv_interval * (scan window / scan interval)
* p_rx. It delivers that many scan results (stochastically rounded, at most `max_results` per
advertiser per slice), each at an evenly spread sample time inside the overlap with its own
RSSI drawn from the log-distance model at the two badges' positions at that time. A result
whose RSSI falls under the receiver sensitivity is lost. Results reach the scanner's IRQ
handler at the end of the slice, in time order.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .channel import Channel, ChannelParams


@dataclass
class Wall:
    x1: float
    y1: float
    x2: float
    y2: float
    loss_db: float = 10.0

    def crosses(self, ax: float, ay: float, bx: float, by: float) -> bool:
        def orient(px, py, qx, qy, rx, ry):
            return (qx - px) * (ry - py) - (qy - py) * (rx - px)
        d1 = orient(self.x1, self.y1, self.x2, self.y2, ax, ay)
        d2 = orient(self.x1, self.y1, self.x2, self.y2, bx, by)
        d3 = orient(ax, ay, bx, by, self.x1, self.y1)
        d4 = orient(ax, ay, bx, by, self.x2, self.y2)
        return (d1 > 0) != (d2 > 0) and (d3 > 0) != (d4 > 0) and d1 != 0 and d2 != 0


class Path:
    """Piecewise-linear position over time: waypoints (t, x, y); optional daily-style repeat."""

    def __init__(self, points: Iterable[Sequence[float]], repeat: float | None = None):
        pts = sorted((float(t), float(x), float(y)) for t, x, y in points)
        if not pts:
            raise ValueError("a path needs at least one point")
        self.ts = [p[0] for p in pts]
        self.xs = [p[1] for p in pts]
        self.ys = [p[2] for p in pts]
        self.repeat = repeat

    @classmethod
    def fixed(cls, x: float, y: float) -> "Path":
        return cls([(0.0, x, y)])

    def at(self, t: float) -> tuple[float, float]:
        ts = self.ts
        if self.repeat:
            t = t % self.repeat
        if len(ts) == 1 or t <= ts[0]:
            return self.xs[0], self.ys[0]
        if t >= ts[-1]:
            return self.xs[-1], self.ys[-1]
        i = bisect.bisect_right(ts, t)
        t0, t1 = ts[i - 1], ts[i]
        f = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
        return (self.xs[i - 1] + f * (self.xs[i] - self.xs[i - 1]),
                self.ys[i - 1] + f * (self.ys[i] - self.ys[i - 1]))

    def moved_to(self, t: float, x: float, y: float) -> "Path":
        """This path until `t`, then a jump to (x, y) held from then on."""
        px, py = self.at(t)
        pts = [(tt, xx, yy) for tt, xx, yy in zip(self.ts, self.xs, self.ys) if tt < t] if not self.repeat else []
        pts.append((t, px, py))
        pts.append((t + 1e-6, x, y))
        return Path(pts)


@dataclass
class RadioParams:
    rssi_1m: float = -60.0          # RSSI at 1 m from a 0 dBm transmitter
    exponent: float = 3.0           # log-distance path-loss exponent (2 = free space)
    noise_db: float = 4.0           # Gaussian shadowing/noise sigma
    noise_clip: float = 2.5         # noise clipped at +-clip*sigma
    sensitivity_dbm: float = -92.0  # weaker results are lost
    p_rx: float = 0.9               # chance an advert inside a scan window is received
    max_results: int = 3            # scan results per advertiser per slice (bound)
    slice_s: float = 5.0            # longest stretch of scanning reported at once
    walls: list[Wall] = field(default_factory=list)
    # channel model (tracecode.sim.channel, docs/channel.md); None or kind "ideal" = the
    # log-distance + clipped Gaussian model above
    channel: ChannelParams | None = None


@dataclass
class AdvSegment:
    start: float
    end: float | None
    addr_type: int
    addr: bytes
    adv_type: int
    data: bytes
    interval_s: float


class Medium:
    def __init__(self, params: RadioParams | None = None, seed: int = 0):
        self.params = params or RadioParams()
        self.rng = random.Random(seed ^ 0x5EED)
        self.radios: list = []   # BLE hardware objects (have .badge, .segments)
        cp = self.params.channel
        self.channel = Channel(cp, seed=seed) if cp is not None and cp.kind != "ideal" else None

    def attach(self, radio) -> None:
        if radio not in self.radios:
            self.radios.append(radio)

    def max_range_m(self) -> float:
        p = self.params
        if self.channel is not None:
            cp = self.channel.p
            return 10 ** ((20.0 - p.sensitivity_dbm - cp.att_1m() + self.channel.best_case_margin_db()) / cp.slope())
        margin = p.noise_db * p.noise_clip + 20.0   # + up to 20 dB of TX power
        return 10 ** ((p.rssi_1m + margin - p.sensitivity_dbm) / (10 * p.exponent))

    def mean_rssi(self, tx_badge, rx_badge, t: float) -> float:
        p = self.params
        ax, ay = tx_badge.position(t)
        bx, by = rx_badge.position(t)
        d = max(0.1, math.hypot(ax - bx, ay - by))
        loss = 10 * p.exponent * math.log10(d)
        for w in p.walls:
            if w.crosses(ax, ay, bx, by):
                loss += w.loss_db
        loss += tx_badge.body_loss_db + rx_badge.body_loss_db
        return tx_badge.tx_power_dbm + p.rssi_1m - loss

    def sample_rssi(self, tx_badge, rx_badge, t: float) -> int | None:
        p = self.params
        if self.channel is not None:
            ax, ay = tx_badge.position(t)
            bx, by = rx_badge.position(t)
            d = max(0.1, math.hypot(ax - bx, ay - by))
            extra = tx_badge.body_loss_db + rx_badge.body_loss_db
            for w in p.walls:
                if w.crosses(ax, ay, bx, by):
                    extra += w.loss_db
            att = self.channel.attenuation(tx_badge.name, rx_badge.name, t, d, extra, (ax, ay), (bx, by),
                                           adv_channel=self.rng.randrange(3))
            r = tx_badge.tx_power_dbm - att
            return None if r < p.sensitivity_dbm else int(round(r))
        n = self.rng.gauss(0.0, p.noise_db) if p.noise_db > 0 else 0.0
        lim = p.noise_db * p.noise_clip
        n = max(-lim, min(lim, n))
        r = self.mean_rssi(tx_badge, rx_badge, t) + n
        if r < p.sensitivity_dbm:
            return None
        return int(round(r))

    def collect(self, scanner, t0: float, t1: float, duty: float) -> list[tuple]:
        """Scan results (t, addr_type, addr, adv_type, rssi, data) heard by `scanner` in [t0, t1]."""
        if t1 <= t0:
            return []
        p = self.params
        rng = self.rng
        rx = scanner.badge
        tm = (t0 + t1) / 2
        rxx, rxy = rx.position(tm)
        slack = 3.0 * (t1 - t0) / 2 + 0.5            # people move a few m/s at most
        floor = p.sensitivity_dbm - p.noise_db * p.noise_clip - p.rssi_1m + rx.body_loss_db
        ch = self.channel
        if ch is not None:   # the fitted channel: its own 1 m level, slope and best case
            floor = p.sensitivity_dbm + ch.p.att_1m() - ch.best_case_margin_db() + rx.body_loss_db
        out = []
        for radio in self.radios:
            if radio is scanner or not radio.segments:
                continue
            tx = radio.badge
            txx, txy = tx.position(tm)
            # cheapest possible link (closest approach during the slice, no walls, best noise)
            d = math.hypot(txx - rxx, txy - rxy) - slack
            slope = ch.p.slope() if ch is not None else 10 * p.exponent
            if d > 1.0 and tx.tx_power_dbm - tx.body_loss_db - slope * math.log10(d) < floor:
                continue
            for seg in radio.segments:
                a = max(t0, seg.start)
                b = t1 if seg.end is None else min(t1, seg.end)
                ov = b - a
                if ov <= 0:
                    continue
                expected = ov / seg.interval_s * duty * p.p_rx
                k = int(expected)
                if rng.random() < expected - k:
                    k += 1
                k = min(k, p.max_results)
                for i in range(k):
                    ts = a + (i + 0.5) * ov / k
                    rssi = self.sample_rssi(tx, rx, ts)
                    if rssi is not None:
                        out.append((ts, seg.addr_type, seg.addr, seg.adv_type, rssi, seg.data))
        out.sort(key=lambda r: r[0])
        return out

    def prune(self, before: float) -> None:
        for radio in self.radios:
            segs = radio.segments
            if segs and segs[0].end is not None and segs[0].end < before:
                radio.segments = [s for s in segs if s.end is None or s.end >= before]
