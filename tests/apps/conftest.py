"""An explorer over the committed checkpoints with small role tables, shared by the app's tests."""
import pytest
import torch

from mechlab.apps.explore import Explorer, TableSizes, find_checkpoints

SMALL = TableSizes(n_eval=100, n_reference=64, n_pairs=4, n_dla=32, n_roles=32)


@pytest.fixture(scope="session")
def explorer(repo_root, generated_data) -> Explorer:
    torch.set_num_threads(1)
    return Explorer(find_checkpoints(repo_root / "checkpoints"), data_dir=generated_data[0], sizes=SMALL)
