import json
from pathlib import Path

import pytest

# Hardware in the loop: --badge-port/--skip-flash/... options and the `bench` fixture.
from tracecode.hil import bench, pytest_addoption  # noqa: F401  (registered with pytest)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def vectors():
    """Official EN v1.2 test vectors (copied from the shared vectors file)."""
    return json.loads((DATA / "gaen-v1.2.json").read_text())


@pytest.fixture(scope="session")
def server_example():
    """A real signed export batch with its public key and the keys it holds."""
    root = DATA / "server-example"
    return {
        "zip": root / "testExport-2-records-1-of-1.zip",
        "pubkey": root / "public.pem",
        "keys": json.loads((root / "keys.json").read_text())["temporaryExposureKeys"],
    }
