"""Fixtures of the data tests: an isolated array cache and real Omniglot loaded once."""

import os
import time

import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Fake data sets are cached in the test's tmp dir, never in ~/.cache."""
    monkeypatch.setenv("TFMETANAS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def omniglot_real():
    """Real Omniglot (both sets, 28x28) from $TFMETANAS_DATA_DIR, loaded once per session.

    Uses the normal cache ($TFMETANAS_CACHE_DIR or ~/.cache/tfmetanas), so only
    the first run on a machine pays the cold load (about 30 s on 2 cores).
    """
    root = os.environ.get("TFMETANAS_DATA_DIR", "")
    if not root:
        pytest.skip("TFMETANAS_DATA_DIR is not set: real Omniglot tests need ../shared/data.")
    from tfmetanas.data import omniglot

    folder = omniglot.find_omniglot_dir(root)
    start = time.time()
    background = omniglot.load_omniglot_set(folder, "images_background", 28)
    evaluation = omniglot.load_omniglot_set(folder, "images_evaluation", 28)
    print(f"Omniglot loaded in {time.time() - start:.1f} s")
    return {"root": root, "background": background, "evaluation": evaluation}
