"""The migration-aware mixture and its measurements on fixed inputs: where P(move) goes, what the
re-weighting does to the next-item distribution, and the figures of the migration table."""

import numpy as np
import pytest
import torch

from training import metrics, migration
from training.model import ModelConfig, ShiftRec

# 6 items in 3 categories: items 1, 2 -> category 1; 3, 4 -> 2; 5, 6 -> 3
ITEM_CAT = torch.tensor([0, 1, 1, 2, 2, 3, 3])


def tiny_model(beta: float, shift_cal: tuple[float, float] = (1.0, 0.0), dest_mix: float = 0.0) -> ShiftRec:
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=6, n_tags=1, n_categories=3, dim=8, n_layers=1, max_len=4, dropout=0.0,
                      use_text=False, shift_window=2)
    model = ShiftRec(cfg, torch.ones(7, 1, dtype=torch.int64), item_categories=ITEM_CAT).eval()
    with torch.no_grad():
        model.beta.fill_(beta)
        model.shift_cal.copy_(torch.tensor(shift_cal))
        model.dest_mix.fill_(dest_mix)
    return model


def serve(model: ShiftRec, items: list[list[int]]) -> dict[str, torch.Tensor]:
    x = torch.tensor(items)
    with torch.no_grad():
        return model.serve(x, (x > 0).long() * 6, torch.arange(x.shape[1]).expand_as(x) * 60)


def test_window_holds_the_last_events_categories_and_never_padding():
    model = tiny_model(0.0)
    inside = serve(model, [[0, 5, 1, 2], [0, 0, 0, 3]])["inside"]  # window 2: items (1, 2), (pad, 3)
    assert inside.tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]]


def test_next_categories_spend_p_move_outside_the_window_and_the_rest_inside():
    out = serve(tiny_model(0.0), [[0, 5, 1, 2], [3, 4, 5, 6]])
    p_move, p_cat = out["shift_probability"], out["category_probabilities"]  # (B,), (B, 3)
    q = out["dest_logp"].exp()[:, 1:]  # the destination head's distribution over the 3 categories
    inside = out["inside"][:, 1:]
    assert torch.allclose(p_cat.sum(-1), torch.ones(2), atol=1e-5)
    outside_mass = (p_cat * (1 - inside)).sum(-1)
    assert torch.allclose(outside_mass, p_move, atol=1e-5)
    # within each side, the head's own proportions are kept
    row = 0  # window {1}: outside = categories 2 and 3
    assert torch.isclose(p_cat[row, 1] / p_cat[row, 2], q[row, 1] / q[row, 2], rtol=1e-4)


def test_beta_zero_leaves_the_next_item_scores_and_beta_one_factorises_by_category():
    items = [[0, 5, 1, 2]]
    plain = serve(tiny_model(0.0), items)
    assert torch.equal(plain["scores"], plain["base"])
    mixed = serve(tiny_model(1.0), items)
    p_item = torch.softmax(mixed["base"], -1)[0]  # (6,)
    p_new = torch.softmax(mixed["scores"], -1)[0]
    cats = ITEM_CAT[1:] - 1
    for c in range(3):
        in_c = cats == c
        # the category's mass becomes the predicted next-category probability ...
        assert torch.isclose(p_new[in_c].sum(), mixed["category_probabilities"][0, c], atol=1e-5)
        # ... and within the category the item model's order and proportions stay
        assert torch.allclose(p_new[in_c] / p_new[in_c].sum(), p_item[in_c] / p_item[in_c].sum(), atol=1e-5)


def test_a_higher_move_probability_lifts_the_items_outside_the_window():
    items = [[0, 5, 1, 2]]  # window: category 1 (items 1, 2)
    low = serve(tiny_model(1.0, shift_cal=(0.0, -4.0)), items)  # P(move) = sigmoid(-4)
    high = serve(tiny_model(1.0, shift_cal=(0.0, 4.0)), items)
    assert float(low["shift_probability"]) == pytest.approx(1 / (1 + np.exp(4)), rel=1e-4)
    outside_low = torch.softmax(low["scores"], -1)[0, 2:].sum()
    outside_high = torch.softmax(high["scores"], -1)[0, 2:].sum()
    assert outside_high > 0.9
    assert outside_low < 0.1


def test_nowhere_to_move_means_no_move():
    model = tiny_model(1.0, shift_cal=(0.0, 4.0))
    with torch.no_grad():
        model.cfg.shift_window = 4
    out = serve(model, [[1, 3, 5, 2]])  # all three categories in the window
    assert float(out["shift_probability"]) == 0.0


def test_the_loss_trains_the_shift_head():
    model = tiny_model(0.0).train()
    x = torch.tensor([[1, 2, 3, 5]])
    loss = model.loss(x, torch.full_like(x, 6), torch.arange(4)[None] * 60, torch.tensor([[2, 3, 5, 6]]))
    loss.backward()
    assert model.cat_head.weight.grad is not None and model.cat_head.weight.grad.abs().sum() > 0
    assert model.move_head.weight.grad is not None and model.move_head.weight.grad.abs().sum() > 0
    assert model.dest_head.weight.grad is not None and model.dest_head.weight.grad.abs().sum() > 0


def test_expected_calibration_error():
    # two bins: predicted 0.2 observed 0.25; predicted 0.8 observed 0.75 -> 0.05
    probs = np.r_[np.full(4, 0.2), np.full(4, 0.8)]
    labels = np.r_[1, 0, 0, 0, 1, 1, 1, 0]
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(0.05)
    assert metrics.expected_calibration_error(np.array([0.0, 1.0]), np.array([0, 1])) == 0.0


def test_destination_rank_counts_only_categories_outside_the_window():
    log_q = np.log(np.array([[0.0, 0.6, 0.1, 0.3], [0.0, 0.6, 0.1, 0.3]]) + 1e-12)
    inside = np.array([[0, 1, 0, 0], [0, 1, 0, 0]], dtype=float)
    ranks = migration._dest_rank(log_q, inside, np.array([2, 1]), np.array([True, False]))
    assert ranks.tolist() == [1, -1]  # category 3 (0.3) beats category 2; the stayed row has none


def test_summary_splits_moved_and_stayed():
    out = migration.SplitOutcome(
        moved=np.array([True, True, False, False]), move_score=np.array([0.9, 0.6, 0.4, 0.1]),
        dest_rank={"d": np.array([0, 4, -1, -1])},
        greater={"served": np.array([0, 20, 1, 30])}, ties={"served": np.zeros(4, int)},
        cat_hit={"served": np.array([True, False, True, True])})
    row = migration.summarize(out, dest="d")
    assert row["AUC_move"] == 1.0 and row["moved_share"] == 0.5
    assert row["dest_top1"] == 0.5 and row["dest_top3"] == 0.5
    assert row["HR@10_moved"] == 0.5 and row["HR@10_stayed"] == 0.5
    assert row["NDCG@10_moved"] == pytest.approx(0.5) and row["NDCG@10_stayed"] == pytest.approx(0.5 / np.log2(3))
    assert row["cat_hit@10_moved"] == 0.5 and row["cat_hit@10_stayed"] == 1.0
