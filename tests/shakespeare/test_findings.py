from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from mechlab.analysis.induction import repeated_random_tokens
from mechlab.core.model import ModelConfig, build_model
from mechlab.shakespeare.findings import (
    InductionLogProb,
    corrupted_first_half,
    emergence_point,
    first_token_score,
    induction_accuracy,
    induction_targets,
    layer_patching,
    replication_share,
    replication_table,
)

SEQ_LEN, VOCAB = 6, 11


class CopyOracle(torch.nn.Module):
    """Predicts, for each token, the token that followed its previous occurrence (uniform when none did)."""

    cfg = SimpleNamespace(device="cpu")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*tokens.shape, VOCAB)
        for b, row in enumerate(tokens.tolist()):
            for i, token in enumerate(row):
                earlier = [j for j in range(i) if row[j] == token]
                if earlier:
                    logits[b, i, row[earlier[-1] + 1]] = 10.0
        return logits


def repeats_without_duplicates(batch: int) -> torch.Tensor:
    """Repeated sequences whose halves hold no character twice, so copying is unambiguous."""
    first = torch.stack([torch.randperm(VOCAB, generator=torch.Generator().manual_seed(i))[:SEQ_LEN] for i in range(batch)])
    return torch.cat([first, first], dim=1)


def test_a_copying_model_predicts_every_induction_target():
    assert induction_accuracy(CopyOracle(), repeats_without_duplicates(8), SEQ_LEN) == 1.0


def test_a_model_that_ignores_the_context_scores_about_chance():
    tokens = repeated_random_tokens(VOCAB, SEQ_LEN, 200)
    blind = CopyOracle()
    blind.forward = lambda t: torch.zeros(*t.shape, VOCAB)  # always predicts token 0
    assert induction_accuracy(blind, tokens, SEQ_LEN) == pytest.approx(1 / VOCAB, abs=0.03)


def test_the_corruption_keeps_the_targets_and_changes_the_copy_source():
    tokens = repeated_random_tokens(VOCAB, SEQ_LEN, 16)
    corrupted = corrupted_first_half(tokens, SEQ_LEN)
    assert torch.equal(corrupted[:, SEQ_LEN:], tokens[:, SEQ_LEN:])
    assert not torch.equal(corrupted[:, :SEQ_LEN], tokens[:, :SEQ_LEN])


def test_the_patching_metric_is_1_on_the_clean_run_and_0_on_the_corrupted_one():
    model = build_model(ModelConfig(n_layers=1, n_heads=2, d_model=16, d_head=8, d_mlp=32, d_vocab=VOCAB, n_ctx=2 * SEQ_LEN), "cpu")
    tokens = repeated_random_tokens(VOCAB, SEQ_LEN, 8)
    clean, corrupted = model(tokens), model(corrupted_first_half(tokens, SEQ_LEN))
    metric = InductionLogProb(induction_targets(tokens, SEQ_LEN), SEQ_LEN).calibrate(clean, corrupted)
    assert metric(clean).item() == pytest.approx(1.0)
    assert metric(corrupted).item() == pytest.approx(0.0, abs=1e-6)


def test_in_a_one_layer_model_the_attention_layer_carries_everything():
    """The only path from the first half to the second is layer 0's attention (the MLP and LayerNorms act
    position by position): patching all of it restores the clean run exactly."""
    model = build_model(ModelConfig(n_layers=1, n_heads=2, d_model=16, d_head=8, d_mlp=32, d_vocab=VOCAB,
                                    n_ctx=2 * SEQ_LEN), "cpu")
    table = layer_patching(model, repeated_random_tokens(VOCAB, SEQ_LEN, 8), SEQ_LEN)
    assert list(table["component"]) == ["layer 0 attention", "L0H0", "L0H1"]
    assert table.loc[0, "effect"] == pytest.approx(1.0, abs=1e-5)


def test_first_token_score_tells_a_positional_head_from_a_previous_token_head():
    pos = 8
    parked = torch.zeros(1, 1, 1, pos, pos)
    parked[..., 0] = 1.0
    previous = torch.zeros(1, 1, 1, pos, pos)
    previous[0, 0, 0, 0, 0] = 1.0
    previous[0, 0, 0, torch.arange(1, pos), torch.arange(pos - 1)] = 1.0
    assert first_token_score(parked).item() == pytest.approx(1.0)
    assert first_token_score(previous).item() == pytest.approx(1 / (pos - 1))


def test_emergence_is_the_first_snapshot_above_the_threshold():
    series = pd.DataFrame({"step": [100, 200, 300], "max_induction_score": [0.1, 0.45, 0.7],
                           "best_head": ["L0H1", "L2H3", "L2H3"], "best_layer": [0, 2, 2]})
    assert emergence_point(series) == {"step": 200, "head": "L2H3", "layer": 2}
    assert emergence_point(series, threshold=0.9)["step"] is None


def test_the_replication_share_counts_findings_every_seed_agrees_on():
    table = replication_table({"seed 0": {"heads": 2, "layer": "1, 2", "ok": True},
                               "seed 1": {"heads": 2, "layer": "1", "ok": True},
                               "seed 2": {"heads": 2, "layer": "1, 2", "ok": True}})
    assert list(table["replicates"]) == [True, False, True]
    assert replication_share(table) == pytest.approx(2 / 3)


def test_sampling_continues_the_prompt_past_the_context_length():
    from mechlab.shakespeare.findings import sample_text
    from mechlab.shakespeare.studies import gpt_config
    from mechlab.toylm.data import SHAKESPEARE_VOCAB
    model = build_model(gpt_config(n_layers=1, n_heads=1, d_model=8, n_ctx=8), "cpu")
    text = sample_text(model, SHAKESPEARE_VOCAB, "ROMEO:", 20, seed=3)
    assert text.startswith("ROMEO:") and len(text) == 26
    assert text == sample_text(model, SHAKESPEARE_VOCAB, "ROMEO:", 20, seed=3)  # the seed fixes the sample


def hand_built_findings(ablated_icl: float):
    """Findings of a 2-layer, 2-head model with one induction head, L1H0, whose ablation moves the
    in-context-learning score from -0.4 to `ablated_icl` (a control set leaves it at -0.39)."""
    from mechlab.shakespeare.findings import SeedFindings
    scores = torch.tensor([[0.02, 0.05], [0.8, 0.1]])
    patching = pd.DataFrame({"component": ["layer 0 attention", "layer 1 attention"], "layer": [0, 1], "head": [-1, -1],
                             "effect": [0.2, 0.9]})
    ablations = pd.DataFrame({"icl_score": [-0.4, ablated_icl, -0.39], "induction_acc": [0.9, 0.1, 0.88]},
                             index=["none", "induction heads", "control heads"])
    taxonomy = {"previous_token": torch.tensor([[0.9, 0.1], [0.0, 0.1]]), "induction": scores}
    return SeedFindings(scores, [(1, 0)], 0.9, patching, ablations, taxonomy, pd.Series([0.1, 0.7], index=["0_pre", "final_post"]),
                        "final_post", "never", {"step": 300, "head": "L1H0", "layer": 1}, 1.8)


def test_the_summary_reads_the_findings_as_comparable_values():
    summary = hand_built_findings(ablated_icl=-0.1).summary()
    assert summary["induction heads (score > 0.4)"] == 1 and summary["layers of the induction heads"] == "1"
    assert summary["patching: attention layer restoring most"] == 1
    assert summary["ablating induction heads removes >= half the ICL score"] is True
    assert summary["ablating induction heads hurts induction accuracy more than a control set"] is True
    assert summary["previous-token heads (layers)"] == "0"
    assert hand_built_findings(ablated_icl=-0.3).summary()["ablating induction heads removes >= half the ICL score"] is False


def test_the_template_table_answers_the_seed_documents_entries():
    from mechlab.shakespeare.findings import template_table
    found = hand_built_findings(ablated_icl=-0.1)
    table = template_table(found, replication_table({"a": found.summary(), "b": found.summary()}), 1234, 2000)
    measured = table["measured"]
    assert measured[("Attention head analysis", "Induction heads (score > 0.4)")] == "L1H0 (0.80)"
    assert measured[("Attention head analysis", "Ablating the induction heads: ICL score")].startswith("-0.400 -> -0.100")
    assert measured[("Comparison to literature", "Emergence iteration")] == 300
    assert measured[("Reproducibility", "Findings that replicate across seeds")] == "11 of 11 (100%)"
