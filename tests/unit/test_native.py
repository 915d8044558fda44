"""The optional native matcher kernel (tracecode._matchcore) against the official vectors and
the Python reference path (tracecode.en / the matcher's numpy path)."""

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tracecode import en, matcher, native
from tracecode.export import DiagnosisKey
from tracecode.matcher import Sighting, match

pytestmark = pytest.mark.timeout(120)

needs_native = pytest.mark.skipif(
    not native.available(),
    reason="native kernel not available (extension not built, TRACECODE_NATIVE=0, or no libcrypto found)",
)

ROOT = Path(__file__).resolve().parents[2]


def _vector_rpis(vectors):
    return [bytes.fromhex(v["rpi"]) for v in vectors["intervals"]]


@pytest.fixture
def sha_variant():
    """The kernel has one crypto path now (OpenSSL libcrypto); kept so the tests read the same."""
    return "libcrypto"


def _random_keys(rng, n, start0=2_900_000):
    keys = []
    for _ in range(n):
        period = rng.choice([1, 2, 7, 8, 9, 15, 16, 17, 72, 143, 144, rng.randint(1, 144)])
        keys.append(DiagnosisKey(rng.randbytes(16), start0 + 144 * rng.randrange(14), period))
    return keys


@needs_native
def test_vector_rpik_and_all_144_rpis(vectors, sha_variant):
    tek = bytes.fromhex(vectors["tek"])
    start = vectors["rolling_start_interval_number"]
    assert native.rpik(tek).hex() == vectors["rpik"]
    assert native.rpik(bytearray(tek)).hex() == native.rpik(memoryview(tek)).hex() == vectors["rpik"]
    buf = native.derive([(tek, start, 144)])
    assert buf == b"".join(_vector_rpis(vectors))
    # The lookup path finds every one of them, with its interval.
    index = native.HeardIndex(_vector_rpis(vectors))
    hits = index.scan([(tek, start, 144)], base=5)
    assert hits == [(5, v["enin"], bytes.fromhex(v["rpi"])) for v in vectors["intervals"]]


@needs_native
def test_derive_equals_python_on_random_keys(sha_variant):
    rng = random.Random(11)
    keys = _random_keys(rng, 300)
    tuples = [(k.key_data, k.rolling_start_interval_number, k.rolling_period) for k in keys]
    expected = b"".join(en.rpis_block(*t) for t in tuples)
    assert native.derive(tuples) == expected
    assert all(native.rpik(t[0]) == en.rpik(t[0]) for t in tuples)


def _planted(rng, keys, n):
    heard = {rng.randbytes(16) for _ in range(2000)}
    for k in rng.sample(keys, n):
        j = rng.randrange(k.rolling_period)
        heard.add(en.rpi(en.rpik(k.key_data), k.rolling_start_interval_number + j))
    return heard


@needs_native
def test_candidates_equal_python_path_with_planted_hits(monkeypatch):
    rng = random.Random(5)
    keys = _random_keys(rng, 1500)
    heard = _planted(rng, keys, 60)
    monkeypatch.setattr(matcher, "CHUNK_KEYS", 256)
    fast = matcher.candidates(keys, heard, jobs=1)
    fast2 = matcher.candidates(keys, heard, jobs=2)
    monkeypatch.setattr(native, "available", lambda: False)
    slow = matcher.candidates(keys, heard, jobs=1)
    assert len(slow) >= 60  # every planted RPI (a random one could repeat, never fewer)
    assert fast == slow
    assert sorted(fast2) == sorted(slow)


@needs_native
def test_match_results_equal_with_and_without_native(vectors, monkeypatch):
    rng = random.Random(9)
    keys = _random_keys(rng, 400)
    sightings = []
    meta = en.encode_metadata(-4)
    for k in rng.sample(keys, 25):
        interval = k.rolling_start_interval_number + rng.randrange(k.rolling_period)
        r = en.rpi(en.rpik(k.key_data), interval)
        sightings.append(Sighting(interval * 600 + 30, r, en.aem(en.aemk(k.key_data), r, meta), -65))
    sightings += [Sighting(2_900_000 * 600 + i, rng.randbytes(16), rng.randbytes(4), -70) for i in range(300)]
    fast = match(keys, sightings, jobs=2)
    monkeypatch.setattr(native, "available", lambda: False)
    slow = match(keys, sightings, jobs=1)
    assert len(slow) == 25
    assert fast == slow


@needs_native
def test_prefix_path_native_equals_python_fallback(monkeypatch):
    """Heard 8-byte RPI prefixes (log v2): the kernel's columnar derivation on threads finds
    what the pure-Python fallback (TRACECODE_NATIVE=0) finds, in the same order."""
    rng = random.Random(12)
    keys = _random_keys(rng, 1500)
    heard = _planted(rng, keys, 60)
    res = matcher.resolve_keys(matcher.KeyOccurrences.from_keys(keys))
    prefixes = np.frombuffer(b"".join(heard), dtype="<u8")[0::2]
    monkeypatch.setattr(matcher, "CHUNK_KEYS", 256)
    fast = matcher._prefix_candidates(res, prefixes, jobs=1)
    fast2 = matcher._prefix_candidates(res, prefixes, jobs=2)
    full = matcher.candidates_resolved(res, b"".join(heard), jobs=2)
    monkeypatch.setenv("TRACECODE_NATIVE", "0")
    assert not native.available()
    slow = matcher._prefix_candidates(res, prefixes, jobs=1)
    slow2 = matcher._prefix_candidates(res, prefixes, jobs=2)
    assert len(slow[0]) >= 60
    for got in (fast, fast2, slow2, full):
        assert got[0].tolist() == slow[0].tolist() and got[1] == slow[1]


@needs_native
def test_empty_inputs():
    assert native.derive([]) == b""
    assert native.HeardIndex([]).scan([(bytes(16), 100, 144)]) == []
    index = native.HeardIndex([bytes(16)])
    assert len(index) == 1
    assert index.scan([]) == []
    assert native.derive([(bytes(16), 100, 0)]) == b""


@needs_native
@pytest.mark.parametrize("tek", [b"", bytes(15), bytes(17), bytes(32)])
def test_wrong_length_tek_is_rejected(tek):
    with pytest.raises(ValueError) as exc:
        native.rpik(tek)
    assert "16 bytes" in str(exc.value)
    with pytest.raises(ValueError):
        native.derive([(bytes(16), 1, 1), (tek, 1, 1)])
    with pytest.raises(ValueError):
        native.HeardIndex([bytes(16)]).scan([(tek, 1, 144)])


@needs_native
def test_bad_inputs_are_rejected_without_leaking_keys():
    secret = bytes(range(16))
    with pytest.raises(ValueError) as exc:
        native.derive([(secret, -1, 144)])
    assert secret.hex() not in str(exc.value)
    with pytest.raises(ValueError):
        native.derive([(secret, 2**32 - 10, 144)])  # ENIN would overflow uint32
    with pytest.raises(TypeError):
        native.derive([(secret, 1)])
    with pytest.raises(TypeError):
        native.derive([("not bytes", 1, 1)])
    with pytest.raises(ValueError):
        native.HeardIndex([bytes(16), bytes(15)])


@needs_native
def test_duplicate_heard_rpis_give_one_hit(vectors):
    tek = bytes.fromhex(vectors["tek"])
    r = _vector_rpis(vectors)[3]
    index = native.HeardIndex([r, r, r])
    assert len(index) == 1
    assert index.scan([(tek, vectors["rolling_start_interval_number"], 144)]) == [
        (0, vectors["intervals"][3]["enin"], r)
    ]


def test_unavailable_kernel_falls_back_to_python(vectors, monkeypatch):
    monkeypatch.setattr(native, "_mc", None)
    assert not native.available()
    assert native.kernel_name() == "python"
    with pytest.raises(RuntimeError):
        native.rpik(bytes(16))
    key = DiagnosisKey(bytes.fromhex(vectors["tek"]), vectors["rolling_start_interval_number"], 144)
    v = vectors["intervals"][7]
    s = Sighting(v["enin"] * 600, bytes.fromhex(v["rpi"]), bytes.fromhex(v["aem"]), -60)
    assert [m.interval for m in match([key], [s], jobs=1)] == [v["enin"]]


@needs_native
def test_kernel_is_bound_to_openssl_libcrypto():
    """The kernel's SHA-256 and AES come from the libcrypto the interpreter loaded."""
    assert "OpenSSL" in native.kernel_name() or "libcrypto" in native.kernel_name()
    assert "libcrypto" in native._crypto["path"]


@needs_native
def test_long_merged_periods_derive_in_runs():
    """Entries longer than one day (the union of overlapping occurrences) derive correctly."""
    tek = bytes(range(16))
    got = native.derive([(tek, 2_900_000, 300)])
    rk = en.rpik(tek)
    assert got == b"".join(en.rpi(rk, 2_900_000 + j) for j in range(300))


def test_environment_switch_disables_kernel(monkeypatch):
    monkeypatch.setenv("TRACECODE_NATIVE", "0")
    assert not native.available()
    assert native.kernel_name() == "python"


def test_matcher_suite_passes_on_the_python_path():
    """tests/unit/test_matcher.py again, with the native kernel switched off."""
    env = {**os.environ, "TRACECODE_NATIVE": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests/unit/test_matcher.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
