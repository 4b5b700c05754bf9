"""An explorer over the committed checkpoints with small role tables, shared by the app's tests."""
import pytest
import torch

from mechlab.apps.explore import QUICK_TABLE, TORCH_THREADS, Explorer, find_checkpoints


@pytest.fixture(scope="session")
def explorer(repo_root, generated_data) -> Explorer:
    return Explorer(find_checkpoints(repo_root / "checkpoints"), data_dir=generated_data[0], sizes=QUICK_TABLE)


@pytest.fixture(autouse=True)
def app_threads():
    """The app's torch thread count during each test, and the previous one restored after it (later tests,
    e.g. training determinism, compare against runs with torch's default)."""
    before = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    yield
    torch.set_num_threads(before)
