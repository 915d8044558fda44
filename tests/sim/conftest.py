import pytest

from tracecode.sim import Fleet


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path / "fleet", seed=7)
    try:
        yield f
    finally:
        f.close()
