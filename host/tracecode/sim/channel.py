"""The radio channel between two badges: what attenuation one reading sees (docs/channel.md).

Two models behind one small interface, used by the virtual badges' medium (`sim.radio.Medium`)
and by the geometry-only runner (`e2e.synthetic`):

* `ideal`: the old channel for unit tests: attenuation = att_1m + 10 n log10(d) + walls + body,
  independent Gaussian noise per reading (sd 4 dB, clipped at +-10 dB), nothing else;
* `fitted` (the default for scenarios and fleets): numbers fitted to the DP-3T project's EPFL
  field measurements (tools/dp3t_fit.py; figures in docs/channel.md):
    - log-distance slope per environment (indoor ~13 dB/decade, vehicle 20 dB/decade);
    - slow fading per pair (reciprocal: both directions share it), two Ornstein-Uhlenbeck
      components (about a minute, and about half an hour; larger in vehicles);
    - body orientation per badge (heading redrawn every few minutes; the wearer's body shadows
      the badge when facing away) and carrying position per badge (lanyard / pocket / bag,
      redrawn over the day);
    - fast fading per reading and per advertising channel (37/38/39: a per-pair, per-channel
      offset redrawn every few minutes, plus independent per-reading noise);
    - per-badge TX and RX offsets the advertised TX power does not know (sd ~2.5 dB each);
    - walls: their loss, plus a little extra spread behind them.
  Boot offsets and scan jitter are the scan schedule's business: `ChannelParams.scan_jitter_s`
  and the runners' random boot phase.

Interface:
    ch = Channel(params, seed)
    ch.attenuation(tx_id, rx_id, t, d, extra_loss_db, tx_xy, rx_xy, adv_channel) -> float (dB)
    ch.attenuations(tx_id, rx_id, times, d, extra_loss, tx_xy, rx_xy, n_per_time) -> [len, n]
RSSI = advertised TX power - attenuation. Times must be non-decreasing per pair for the slow
processes (the medium and the synthetic runner both go forward in time).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

ENVIRONMENTS = ("indoor", "vehicle", "open")
CARRY_STATES = ("lanyard", "pocket", "bag")


@dataclass
class ChannelParams:
    kind: str = "fitted"                 # "fitted" or "ideal"
    environment: str = "indoor"          # indoor | vehicle | open
    # median attenuation at 1 m (advertised TX power - RSSI) in the EN calibration convention
    # (DP-3T exp34, GAEN with Google's per-model calibration: 53.9 dB); the ideal model uses 60
    att_1m_db: float = 54.0
    # log-distance slope (dB per decade of distance) per environment; fitted: DP-3T exp05/exp34
    slope_db_per_decade: dict[str, float] = field(
        default_factory=lambda: {"indoor": 13.7, "vehicle": 17.4, "open": 13.7})
    # beyond the fitted range (0.2-10 m) the loss steepens (dual-slope model): dB/decade past it
    breakpoint_m: float = 10.0
    far_slope_db_per_decade: float = 30.0
    # per-reading noise (independent) and per-advertising-channel offset (per pair, redrawn)
    fast_sd_db: float = 4.2
    channel_sd_db: float = 1.5
    channel_redraw_s: float = 120.0
    # slow fading per pair: two OU components (sd dB, time constant s); x vehicle_slow_factor in vehicles
    slow1_sd_db: float = 3.05
    slow1_tau_s: float = 40.0
    slow2_sd_db: float = 1.5
    slow2_tau_s: float = 900.0
    vehicle_slow_factor: float = 1.3
    # body orientation: heading per badge redrawn every ~orient_mean_s; loss when facing away
    orient_mean_s: float = 300.0
    # carrying position per badge: probability, base loss (dB), loss when the body is in the way
    carry_p: dict[str, float] = field(default_factory=lambda: {"lanyard": 0.8, "pocket": 0.15, "bag": 0.05})
    carry_base_db: dict[str, float] = field(default_factory=lambda: {"lanyard": 0.0, "pocket": 3.0, "bag": 7.0})
    carry_body_db: dict[str, float] = field(default_factory=lambda: {"lanyard": 5.0, "pocket": 4.0, "bag": 2.0})
    carry_mean_s: float = 4 * 3600.0
    # device offsets unknown to the advertised TX power (fitted: DP-3T device offsets)
    tx_offset_sd_db: float = 2.5
    rx_offset_sd_db: float = 2.5
    wall_extra_sd_db: float = 1.0        # walls: extra spread per pair behind a wall
    # a badge's TX/RX offsets measured at provisioning against a reference badge at 1 m (the
    # station's bench check): what is left unknown after it
    bench_calibration_sd_db: float = 1.0
    # ideal model
    ideal_exponent: float = 3.0
    ideal_noise_db: float = 4.0
    ideal_noise_clip: float = 2.5
    ideal_att_1m_db: float = 60.0
    # scan schedule irregularity (runners): +- jitter of each scan start
    scan_jitter_s: float = 2.0

    def slope(self) -> float:
        if self.kind == "ideal":
            return 10.0 * self.ideal_exponent
        return float(self.slope_db_per_decade.get(self.environment, self.slope_db_per_decade["indoor"]))

    def slow_factor(self) -> float:
        return self.vehicle_slow_factor if self.environment == "vehicle" else 1.0

    def att_1m(self) -> float:
        return self.ideal_att_1m_db if self.kind == "ideal" else self.att_1m_db

    def mean_attenuation(self, d: float) -> float:
        """Median attenuation at d metres, the curve the rule constraints use."""
        d = max(d, 0.1)
        a = self.att_1m() + self.slope() * math.log10(d)
        if self.kind != "ideal" and d > self.breakpoint_m:
            a += (self.far_slope_db_per_decade - self.slope()) * math.log10(d / self.breakpoint_m)
        return a

    def _orient_var(self) -> float:
        # loss = body_db * (1 - cos u) / 2 with u uniform: variance body^2 / 8, per badge, both ends
        return 2 * sum(p * (self.carry_body_db[c] ** 2) / 8 for c, p in self.carry_p.items())

    def mean_body_db(self) -> float:
        """Mean orientation + carrying loss of a link (both ends): already inside the fitted 1 m
        level, so the model subtracts it and its median at 1 m stays `att_1m_db`."""
        return 2 * sum(p * (self.carry_base_db[c] + self.carry_body_db[c] / 2) for c, p in self.carry_p.items())

    def _carry_var(self) -> float:
        mean = sum(p * self.carry_base_db[c] for c, p in self.carry_p.items())
        return 2 * sum(p * (self.carry_base_db[c] - mean) ** 2 for c, p in self.carry_p.items())

    def total_sd_db(self) -> float:
        """Spread of one reading about the distance line, device offsets removed."""
        if self.kind == "ideal":
            return self.ideal_noise_db
        f = self.slow_factor()
        v = (self.fast_sd_db ** 2 + self.channel_sd_db ** 2 + (f * self.slow1_sd_db) ** 2
             + (f * self.slow2_sd_db) ** 2 + self._orient_var() + self._carry_var())
        return math.sqrt(v)

    def to_json(self) -> dict:
        return asdict(self)


def model_correlation(p: ChannelParams, lag_s: float) -> float:
    """Correlation of one pair's residual `lag_s` apart (what tools/dp3t_fit.py measures)."""
    if p.kind == "ideal":
        return 0.0
    f = p.slow_factor()
    num = ((f * p.slow1_sd_db) ** 2 * math.exp(-lag_s / p.slow1_tau_s)
           + (f * p.slow2_sd_db) ** 2 * math.exp(-lag_s / p.slow2_tau_s)
           + p.channel_sd_db ** 2 * max(0.0, 1 - lag_s / p.channel_redraw_s) / 3
           + p._orient_var() * math.exp(-lag_s / p.orient_mean_s)
           + p._carry_var() * math.exp(-lag_s / p.carry_mean_s))
    return num / p.total_sd_db() ** 2


def params_from(spec: Any, *, default_kind: str = "fitted") -> ChannelParams:
    """ChannelParams from a scenario's `radio:` value: None (the fitted default), "ideal" /
    "fitted", or a mapping with `model:` (ideal | fitted), `environment:` and any field."""
    from ..errors import InputError

    if spec is None:
        return ChannelParams(kind=default_kind)
    if isinstance(spec, ChannelParams):
        return spec
    if isinstance(spec, str):
        if spec not in ("ideal", "fitted"):
            raise InputError(f"radio: {spec!r} is not a channel model (ideal or fitted)")
        return ChannelParams(kind=spec)
    if not isinstance(spec, dict):
        raise InputError("radio: must be 'ideal', 'fitted' or a mapping")
    spec = dict(spec)
    kind = spec.pop("model", spec.pop("kind", default_kind))
    if kind not in ("ideal", "fitted"):
        raise InputError(f"radio: model {kind!r} is not a channel model (ideal or fitted)")
    p = ChannelParams(kind=kind)
    env = spec.pop("environment", None)
    if env is not None:
        if env not in ENVIRONMENTS:
            raise InputError(f"radio: environment {env!r} (one of {', '.join(ENVIRONMENTS)})")
        p.environment = env
    # the simulator's historic keys (docs/sim.md) configure the ideal model only
    legacy = {"rssi_1m": "ideal_att_1m_db", "exponent": "ideal_exponent", "noise_db": "ideal_noise_db",
              "noise_clip": "ideal_noise_clip"}
    known = set(ChannelParams.__dataclass_fields__)
    for k, v in spec.items():
        name = legacy.get(k, k)
        if k == "rssi_1m":
            v = -float(v)
        if name not in known:
            continue        # medium-only keys (sensitivity_dbm, p_rx, ...) are read by the medium
        cur = getattr(p, name)
        if isinstance(cur, dict):
            if not isinstance(v, dict):
                raise InputError(f"radio: {k} must be a mapping")
            cur = dict(cur)
            cur.update({str(a): float(b) for a, b in v.items()})
            setattr(p, name, cur)
        else:
            try:
                setattr(p, name, type(cur)(v))
            except (TypeError, ValueError):
                raise InputError(f"radio: {k} must be a number") from None
    return p


def _key(s: str) -> int:
    return zlib.crc32(s.encode())


class _Pair:
    __slots__ = ("t", "s1", "s2", "chan_t", "chan", "wall")

    def __init__(self, rng: np.random.Generator, p: ChannelParams):
        f = p.slow_factor()
        self.t = None
        self.s1 = rng.normal(0, f * p.slow1_sd_db)
        self.s2 = rng.normal(0, f * p.slow2_sd_db)
        self.chan_t = -1e18
        self.chan = np.zeros(3)
        self.wall = rng.normal(0, p.wall_extra_sd_db)


class _Badge:
    __slots__ = ("tx_off", "rx_off", "o_times", "o_heading", "c_times", "c_state")


class Channel:
    def __init__(self, params: ChannelParams | None = None, seed: int = 0, *, horizon_s: float = 40 * 86400.0,
                 t0: float = 0.0):
        self.p = params or ChannelParams()
        self.seed = seed
        self.t0 = t0
        self.horizon = horizon_s
        self.rng = np.random.default_rng([seed, 0xC4A7])
        self._badges: dict[str, _Badge] = {}
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self.ideal = self.p.kind == "ideal"

    def with_params(self, **over) -> "Channel":
        return Channel(replace(self.p, **over), self.seed, horizon_s=self.horizon, t0=self.t0)

    # ------------------------------------------------------------------ badges
    def badge(self, bid: str) -> _Badge:
        b = self._badges.get(bid)
        if b is None:
            p = self.p
            rng = np.random.default_rng([self.seed, _key(bid)])
            b = _Badge()
            b.tx_off = float(rng.normal(0, p.tx_offset_sd_db))
            b.rx_off = float(rng.normal(0, p.rx_offset_sd_db))
            n = int(self.horizon / p.orient_mean_s * 1.5) + 10
            b.o_times = self.t0 + np.cumsum(rng.exponential(p.orient_mean_s, n))
            b.o_heading = rng.uniform(-math.pi, math.pi, n + 1)
            m = int(self.horizon / p.carry_mean_s * 1.5) + 10
            b.c_times = self.t0 + np.cumsum(rng.exponential(p.carry_mean_s, m))
            probs = np.array([p.carry_p[c] for c in CARRY_STATES], dtype=float)
            b.c_state = rng.choice(len(CARRY_STATES), m + 1, p=probs / probs.sum())
            self._badges[bid] = b
        return b

    def bench_calibration(self, bid: str) -> tuple[float, float]:
        """(TX, RX) offset of a badge as a provisioning bench check at 1 m measures it: the true
        offsets plus the bench's error (sd `bench_calibration_sd_db`); zero for the ideal model."""
        if self.ideal:
            return 0.0, 0.0
        b = self.badge(bid)
        rng = np.random.default_rng([self.seed, _key(bid), 0xBE7C])
        e = rng.normal(0, self.p.bench_calibration_sd_db, 2)
        return b.tx_off + float(e[0]), b.rx_off + float(e[1])

    def carry_of(self, bid: str, t: float) -> str:
        b = self.badge(bid)
        return CARRY_STATES[int(b.c_state[np.searchsorted(b.c_times, t)])]

    def _body_loss(self, b: _Badge, times: np.ndarray, towards: np.ndarray) -> np.ndarray:
        """Loss at badge b when the other badge lies in direction `towards` (radians)."""
        p = self.p
        heading = b.o_heading[np.searchsorted(b.o_times, times)]
        state = b.c_state[np.searchsorted(b.c_times, times)]
        base = np.array([p.carry_base_db[c] for c in CARRY_STATES])[state]
        body = np.array([p.carry_body_db[c] for c in CARRY_STATES])[state]
        return base + body * (1 - np.cos(heading - towards)) / 2

    # ------------------------------------------------------------------ pairs
    def _pair(self, a: str, b: str) -> _Pair:
        k = (a, b) if a <= b else (b, a)
        pr = self._pairs.get(k)
        if pr is None:
            pr = _Pair(np.random.default_rng([self.seed, _key(k[0]), _key(k[1])]), self.p)
            self._pairs[k] = pr
        return pr

    def _slow(self, pr: _Pair, times: np.ndarray) -> np.ndarray:
        p = self.p
        f = p.slow_factor()
        out = np.empty(len(times))
        rng = self.rng
        e1 = rng.standard_normal(len(times))
        e2 = rng.standard_normal(len(times))
        s1, s2, last = pr.s1, pr.s2, pr.t
        sd1, sd2 = f * p.slow1_sd_db, f * p.slow2_sd_db
        for i, t in enumerate(times.tolist()):
            if last is not None:
                dt = max(0.0, t - last)
                a1 = math.exp(-dt / p.slow1_tau_s)
                a2 = math.exp(-dt / p.slow2_tau_s)
                s1 = a1 * s1 + sd1 * math.sqrt(1 - a1 * a1) * e1[i]
                s2 = a2 * s2 + sd2 * math.sqrt(1 - a2 * a2) * e2[i]
            last = t
            out[i] = s1 + s2
        pr.s1, pr.s2, pr.t = s1, s2, last
        return out

    def _channels(self, pr: _Pair, times: np.ndarray) -> np.ndarray:
        """[len(times), 3] per-advertising-channel offsets, redrawn every channel_redraw_s."""
        p = self.p
        out = np.empty((len(times), 3))
        for i, t in enumerate(times.tolist()):
            if t - pr.chan_t >= p.channel_redraw_s:
                pr.chan = self.rng.normal(0, p.channel_sd_db, 3)
                pr.chan_t = t
            out[i] = pr.chan
        return out

    # ------------------------------------------------------------------ readings
    def attenuations(self, tx: str, rx: str, times, d, extra_loss=0.0, tx_xy=None, rx_xy=None,
                     n: int = 1, adv_channels=None) -> np.ndarray:
        """Attenuation (dB, relative to the advertised TX power) of `n` readings at each time:
        [len(times), n]. `d` distance (m) and `extra_loss` (walls + configured body loss, dB) per
        time; tx_xy / rx_xy positions [len, 2] (for orientation; None = no orientation term)."""
        times = np.asarray(times, dtype=float)
        m = len(times)
        d = np.maximum(np.broadcast_to(np.asarray(d, dtype=float), (m,)), 0.1)
        extra = np.broadcast_to(np.asarray(extra_loss, dtype=float), (m,))
        p = self.p
        rng = self.rng
        base = p.att_1m() + p.slope() * np.log10(d) + extra
        if self.ideal:
            noise = rng.normal(0, p.ideal_noise_db, (m, n)) if p.ideal_noise_db > 0 else np.zeros((m, n))
            lim = p.ideal_noise_db * p.ideal_noise_clip
            return base[:, None] + np.clip(noise, -lim, lim)
        base = base + (p.far_slope_db_per_decade - p.slope()) * np.log10(np.maximum(d / p.breakpoint_m, 1.0))
        bt, br = self.badge(tx), self.badge(rx)
        pr = self._pair(tx, rx)
        slow = self._slow(pr, times)
        wall = np.where(extra > 0, pr.wall, 0.0)
        if tx_xy is not None and rx_xy is not None:
            tx_xy = np.asarray(tx_xy, dtype=float).reshape(m, 2)
            rx_xy = np.asarray(rx_xy, dtype=float).reshape(m, 2)
            ang = np.arctan2(rx_xy[:, 1] - tx_xy[:, 1], rx_xy[:, 0] - tx_xy[:, 0])
            body = self._body_loss(bt, times, ang) + self._body_loss(br, times, ang + math.pi) - p.mean_body_db()
        else:
            body = np.zeros(m)          # no geometry: the median body loss (inside att_1m_db)
        mean = base + slow + wall + body + bt.tx_off + br.rx_off
        chans = self._channels(pr, times)
        if adv_channels is None:
            adv_channels = np.broadcast_to(np.arange(n) % 3, (m, n))
        else:
            adv_channels = np.broadcast_to(np.asarray(adv_channels, dtype=int), (m, n))
        ch = np.take_along_axis(chans, adv_channels, axis=1)
        fast = rng.normal(0, p.fast_sd_db, (m, n))
        return mean[:, None] + ch + fast

    def attenuation(self, tx: str, rx: str, t: float, d: float, extra_loss: float = 0.0,
                    tx_xy=None, rx_xy=None, adv_channel: int | None = None) -> float:
        """One reading (the medium's per-advert call)."""
        ch = None if adv_channel is None else [[adv_channel % 3]]
        a = self.attenuations(tx, rx, [t], [d], [extra_loss],
                              None if tx_xy is None else [tx_xy], None if rx_xy is None else [rx_xy],
                              n=1, adv_channels=ch)
        return float(a[0, 0])

    def best_case_margin_db(self) -> float:
        """How much stronger than the median curve a reading can plausibly be (range pruning)."""
        if self.ideal:
            return self.p.ideal_noise_db * self.p.ideal_noise_clip
        return 4.5 * self.p.total_sd_db() + 3 * max(self.p.tx_offset_sd_db, self.p.rx_offset_sd_db)
