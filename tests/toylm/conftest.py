"""Tiny Shakespeare for the tests that need the real file (skipped, with the reason, where it is absent)."""
import pytest

from mechlab.toylm.data import CharCorpus, ShakespeareDataError, load_shakespeare, shakespeare_path


@pytest.fixture(scope="session")
def shakespeare() -> CharCorpus:
    try:
        return load_shakespeare()
    except ShakespeareDataError:
        pytest.skip(f"Tiny Shakespeare is not at {shakespeare_path()} (set MECHLAB_SHAKESPEARE or see mechlab.toylm.data)")
