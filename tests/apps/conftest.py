"""An explorer over the committed checkpoints with small role tables, shared by the app's tests."""
import pytest
import torch

from mechlab.apps.explore import QUICK_TABLE, Explorer, find_checkpoints


@pytest.fixture(scope="session")
def explorer(repo_root, generated_data) -> Explorer:
    torch.set_num_threads(1)
    return Explorer(find_checkpoints(repo_root / "checkpoints"), data_dir=generated_data[0], sizes=QUICK_TABLE)
