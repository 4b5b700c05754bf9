"""Comparing internals on two prompt sets: attention mass by group, its distance, activation shift."""
import pytest
import torch

from mechlab.analysis.attention import attention_patterns
from mechlab.analysis.compare import (
    activation_shift,
    mass_by_group,
    position_ids,
    position_remap_hook,
    reads_fixed_positions,
    total_variation,
)


def test_mass_by_group_sums_sources_and_averages_selected_destinations():
    patterns = torch.zeros(2, 1, 3, 3)  # [batch, head, dest, src]
    patterns[0, 0, 2] = torch.tensor([0.5, 0.25, 0.25])
    patterns[1, 0, 2] = torch.tensor([0.0, 0.0, 1.0])
    patterns[:, 0, 0, 0] = 1.0  # destination 0 is not selected below
    groups = torch.tensor([[0, 1, 1], [1, 1, 0]])  # the same group sits at different positions per prompt
    dest = torch.tensor([[False, False, True], [False, False, True]])
    mass = mass_by_group(patterns, groups, dest, n_groups=2)  # [head, group]
    assert mass.tolist() == [[(0.5 + 1.0) / 2, (0.5 + 0.0) / 2]]
    with pytest.raises(ValueError, match="no destination"):
        mass_by_group(patterns, groups, torch.zeros_like(dest), 2)


def test_mass_by_position_of_a_model_is_a_distribution_per_head(tiny_model, tiny_config):
    tokens = torch.randint(0, tiny_config.d_vocab, (4, 6), generator=torch.Generator().manual_seed(0))
    patterns = attention_patterns(tiny_model, tokens)
    dest = torch.zeros(4, 6, dtype=torch.bool)
    dest[:, -1] = True
    mass = mass_by_group(patterns, position_ids(tokens), dest, 6)  # [layer, head, pos]
    assert mass.shape == (tiny_config.n_layers, tiny_config.n_heads, 6)
    torch.testing.assert_close(mass.sum(-1), torch.ones(tiny_config.n_layers, tiny_config.n_heads, dtype=mass.dtype))
    torch.testing.assert_close(mass, patterns[:, :, :, -1].mean(0))


def test_total_variation_is_zero_for_equal_profiles_and_one_for_disjoint_ones():
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    q = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert total_variation(p, q).tolist() == [0.0, 1.0]


def test_activation_shift_is_in_units_of_the_reference_spread():
    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(500, 3, 8, generator=gen) * torch.tensor([1.0, 5.0, 0.1])[:, None]  # [n, component, d]
    spread = (reference - reference.mean(0)).pow(2).sum(-1).mean(0).sqrt()
    moved = reference + torch.zeros(8).index_fill(0, torch.tensor([0]), 1.0) * spread[:, None]  # each by one spread
    torch.testing.assert_close(activation_shift(reference, moved), torch.ones(3))
    torch.testing.assert_close(activation_shift(reference, reference), torch.zeros(3))
    assert activation_shift(reference, reference * 3).max() < 0.2  # a wider set with the same mean barely shifts


def test_a_head_that_keeps_its_positions_when_the_layout_shifts_reads_fixed_positions():
    # in-distribution: attends to position 2, which holds slot 1; shifted layout: slot 1 moved to position 3
    id_slot, id_pos = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 0.0])
    positional = (torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 0.0]))  # same position, other slot
    following = (torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 0.0, 1.0]))  # same slot, other position
    tv = lambda shifted: (total_variation(id_slot, shifted[0]), total_variation(id_pos, shifted[1]))  # noqa: E731
    assert reads_fixed_positions(*tv(positional)).item() is True
    assert reads_fixed_positions(*tv(following)).item() is False


def test_position_remap_hook_is_a_no_op_for_the_identity_and_moves_embeddings_otherwise(tiny_model, tiny_config):
    tokens = torch.randint(0, tiny_config.d_vocab, (3, 6), generator=torch.Generator().manual_seed(1))
    clean = tiny_model(tokens)
    with tiny_model.hooks(fwd_hooks=[position_remap_hook(tiny_model, torch.arange(4))]):  # shorter than the input
        torch.testing.assert_close(tiny_model(tokens), clean)
    swap = torch.tensor([0, 2, 1, 3, 4, 5])
    with tiny_model.hooks(fwd_hooks=[position_remap_hook(tiny_model, swap)]):
        moved = tiny_model(tokens)
        shorter = tiny_model(tokens[:, :3])  # inputs shorter than the index (greedy decoding) use its start
    assert not torch.allclose(moved, clean)
    torch.testing.assert_close(shorter, moved[:, :3])
    original = tiny_model.W_pos.data.clone()
    tiny_model.W_pos.data[:6] = original[swap]
    torch.testing.assert_close(tiny_model(tokens), moved)
    tiny_model.W_pos.data.copy_(original)
