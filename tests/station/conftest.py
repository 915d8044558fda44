"""Fixtures shared by the station tests."""

import pytest

from tracecode.station.db import Database


@pytest.fixture
def db(tmp_path):
    """An empty station database in the test's folder."""
    d = Database(tmp_path / "station.sqlite")
    yield d
    d.close()
