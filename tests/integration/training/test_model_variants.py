"""The optional model parts measured for the accuracy work (training/RESULTS.md): the causal
frequency filter beside attention and the contrastive regulariser. Each keeps what the model
promises: no position sees a later event, left padding changes nothing, and the package exports
with its parity check."""

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from shared import model_package as pkg
from training.model import ModelConfig, ShiftRec
from training.train import RunOptions, TrainConfig, main, train

from .conftest import TINY

VARIANTS = {"filter": {"filter_alpha": 0.5, "filter_window": 3, "filter_learned": False},
            "contrastive": {"cl_weight": 0.1, "cl_temp": 1.0},
            "start_positions": {"positions": "start"},
            "learned_filter": {"filter_alpha": 0.5, "filter_window": 3, "filter_learned": True},
            "label_smoothing": {"label_smoothing": 0.1},
            "text_mlp": {"text_layers": 2},
            "item_graph": {"graph_weight": 0.5},
            "graph_window_hops": {"graph_weight": 0.5, "graph_window": 2, "graph_hops": 2},
            "text_graph": {"graph_weight": 0.5, "graph_text_k": 3}}


def small_model(**over) -> ShiftRec:
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=20, n_tags=4, n_categories=3, max_len=8, dim=16, n_layers=2, use_text=False, **over)
    tags = torch.randint(0, 5, (21, 2))
    cats = torch.randint(1, 4, (21,))
    return ShiftRec(cfg, tags, item_categories=cats).eval()


def sequence(length: int, width: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    items = torch.zeros(1, width, dtype=torch.int64)
    items[0, -length:] = torch.randint(1, 21, (length,), generator=g)
    types = (items > 0).long()
    times = torch.zeros_like(items)
    times[0, -length:] = torch.cumsum(torch.randint(0, 10_000, (length,), generator=g), 0) + 1_400_000_000
    return items, types, times


def unsettle(model: ShiftRec) -> None:
    """Taps away from their starting mean and beta away from 1 (where the filter passes its input
    through whatever the taps), so that every tap reaches the output."""
    with torch.no_grad():
        for block in model.blocks:
            block.filter.taps.uniform_(0.1, 1.0)
            block.filter.sqrt_beta.fill_(0.5)


@pytest.mark.parametrize("variant", ["filter", "learned_filter"])
def test_the_filter_is_causal(variant):
    model = small_model(**VARIANTS[variant])
    if variant == "learned_filter":
        unsettle(model)
    items, types, times = sequence(6, 8)
    changed = items.clone()
    changed[0, -1] = 1 + changed[0, -1] % 20  # a different last event
    with torch.no_grad():
        table = model.item_table()
        a = model.encode(items, types, times, table)
        b = model.encode(changed, types, times, table)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])  # earlier positions do not see it
    assert not torch.allclose(a[:, -1], b[:, -1])  # the last one does


@pytest.mark.parametrize("variant", ["filter", "learned_filter"])
def test_the_filter_ignores_left_padding(variant):
    model = small_model(**VARIANTS[variant])
    if variant == "learned_filter":
        unsettle(model)
    items, types, times = sequence(4, 8)
    with torch.no_grad():
        full = model.score(items, types, times)[0]
        trimmed = model.score(items[:, -4:], types[:, -4:], times[:, -4:])[0]
    torch.testing.assert_close(full, trimmed)


@pytest.mark.parametrize("positions", ["start", "none"])
def test_with_positions_from_the_start_each_position_sees_what_its_prefix_would_at_serving(positions):
    """Training reads every position of a sequence; serving reads the last position of a prefix.
    With positions counted from the row's first event (or none) the two are the same numbers; with
    window slots counted back from the end they are not (an earlier position knows how many events
    follow it)."""
    models = {p: small_model(positions=p, **VARIANTS["filter"]) for p in (positions, "end")}
    items, types, times = sequence(6, 8)
    with torch.no_grad():
        for p, model in models.items():
            table = model.item_table()
            full = model.encode(items, types, times, table)[0]
            for n in range(1, 7):  # the prefix of n events, left-padded to the same width
                prefix = [torch.nn.functional.pad(a[:, -6 : -6 + n or None], (8 - n, 0)) for a in (items, types, times)]
                served = model.encode(*prefix, table, last=True)[0, 0]
                same = torch.allclose(served, full[-7 + n], atol=1e-5)
                assert same == (p != "end") or n == 6, (p, n)


def test_learned_taps_start_as_the_moving_average():
    fixed, learned = small_model(**VARIANTS["filter"]), small_model(**VARIANTS["learned_filter"])
    assert learned.load_state_dict(fixed.state_dict(), strict=False).missing_keys == \
        [f"blocks.{i}.filter.taps" for i in range(2)]
    items, types, times = sequence(6, 8)
    with torch.no_grad():
        for model in (fixed, learned):  # beta away from 1, where the filter's output is its input
            for block in model.blocks:
                block.filter.sqrt_beta.fill_(0.5)
        torch.testing.assert_close(learned.score(items, types, times)[0], fixed.score(items, types, times)[0])
        learned.blocks[1].filter.taps[:, 0, -1] += 0.5  # a learned tap moves the scores
        assert not torch.allclose(learned.score(items, types, times)[0], fixed.score(items, types, times)[0])


def test_label_smoothing_spreads_the_target_over_real_items_only():
    model = small_model(label_smoothing=0.1, shift_weight=0.0)
    items, types, times = sequence(6, 8)
    targets = torch.roll(items, -1, dims=1)
    targets[0, -1] = 3
    targets[items == 0] = 0
    with torch.no_grad():
        got = model.loss(items, types, times, targets)
        table = model.item_table()
        logp = torch.log_softmax(model.encode(items, types, times, table)[targets > 0] @ table[1:].T, dim=-1)
        y = targets[targets > 0] - 1
        want = (0.9 * -logp.gather(1, y[:, None]).squeeze(1) + 0.1 * -logp.mean(-1)).mean()
    torch.testing.assert_close(got, want)
    assert float(got) < 1e3  # padding's -1e9 logit is not in the spread


@pytest.mark.parametrize("over", [{"label_smoothing": 1.0}, {"label_smoothing": -0.1},
                                  {"label_smoothing": 0.1, "loss": "sampled"}])
def test_bad_label_smoothing_is_refused(over):
    with pytest.raises(ValueError, match="label_smoothing"):
        small_model(**over)


def test_two_text_layers_keep_an_untitled_item_at_its_id_and_tags():
    torch.manual_seed(0)
    text = torch.randn(21, 6)
    text[[0, 5]] = 0.0  # padding and an item without a title
    cfg = ModelConfig(n_items=20, n_tags=4, n_categories=3, max_len=8, dim=16, text_dim=6, text_layers=2)
    model = ShiftRec(cfg, torch.randint(0, 5, (21, 2)), item_text=text).eval()
    with torch.no_grad():
        table = model.item_table()
        content = model.text_proj(model.item_text)
    assert float(table[0].abs().max()) == 0.0  # padding stays the zero row
    assert float(content[5].abs().max()) == 0.0  # no title: nothing added to its id and tags
    assert float(content[1].abs().max()) > 0.0  # a title: a text part
    assert isinstance(model.text_proj[1], torch.nn.GELU)


@pytest.mark.parametrize("use_text", [True, False])
@pytest.mark.parametrize("layers", [0, 3])
def test_bad_text_layers_are_refused(layers, use_text):
    cfg = ModelConfig(n_items=20, n_tags=4, n_categories=3, max_len=8, dim=16, text_dim=6, text_layers=layers,
                      use_text=use_text)
    with pytest.raises(ValueError, match="text_layers"):
        ShiftRec(cfg, torch.randint(0, 5, (21, 2)), item_text=torch.randn(21, 6))


def test_unknown_positions_are_refused():
    with pytest.raises(ValueError, match="positions"):
        small_model(positions="middle")


def test_the_contrastive_term_changes_training_only():
    plain, cl = small_model(), small_model(**VARIANTS["contrastive"])
    cl.load_state_dict(plain.state_dict())
    items, types, times = (torch.cat(parts) for parts in zip(*(sequence(6, 8, seed) for seed in range(3))))
    targets = torch.roll(items, -1, 1)
    targets[:, -1] = 3  # a batch of three: the other two are each one's negatives
    with torch.no_grad():
        torch.testing.assert_close(plain.score(items, types, times)[0], cl.score(items, types, times)[0])
        plain.train(), cl.train()
        torch.manual_seed(1)
        a = plain.loss(items, types, times, targets)
        torch.manual_seed(1)
        b = cl.loss(items, types, times, targets)
    assert float(b) != float(a)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_trains_and_exports_with_parity(variant, tiny, tmp_path):
    result = train(tiny, ModelConfig(**TINY, **VARIANTS[variant]), TrainConfig(epochs=1, device="cpu"),
                   progress=False)
    assert np.isfinite(result.history[0]["loss"])
    main(data=tiny, out=str(tmp_path / "models"),
         run=RunOptions(overrides={**TINY, **VARIANTS[variant], "epochs": 1}, device="cpu", progress=False))
    manifest = pkg.load_manifest(tmp_path / "models" / pkg.latest_version(tmp_path / "models"))
    assert manifest.metrics["parity"]["max_abs_diff_scores"] <= 1e-4


def test_sampled_softmax_builds_only_the_rows_it_uses_and_means_the_same():
    """The sampled loss reads the item rows the batch touches; it equals the same loss computed
    from the whole item table with the same negatives."""
    model = small_model(loss="sampled", n_negatives=7, shift_weight=0.0)
    items, types, times = sequence(6, 8)
    targets = torch.roll(items, -1, dims=1)
    targets[0, -1] = 3
    targets[items == 0] = 0
    torch.manual_seed(1)
    got = model.loss(items, types, times, targets)
    torch.manual_seed(1)
    neg = torch.randint(1, model.cfg.n_items + 1, (7,))
    with torch.no_grad():
        table = model.item_table()
        hs = model.encode(items, types, times, table)[targets > 0]
        y = targets[targets > 0]
        logits = torch.cat([(hs * table[y]).sum(-1, keepdim=True),
                            (hs @ table[neg].T).masked_fill(neg[None, :] == y[:, None], float("-inf"))], dim=1)
        want = torch.nn.functional.cross_entropy(logits, torch.zeros_like(y))
    torch.testing.assert_close(got.detach(), want)
    got.backward()  # the gradient reaches the id embeddings of the rows used, and only those
    touched = model.item_emb.weight.grad.abs().sum(-1) > 0
    assert set(torch.nonzero(touched).flatten().tolist()) <= set(torch.cat([items.reshape(-1), y, neg]).tolist())


@pytest.mark.parametrize("over", [{}, VARIANTS["filter"], {"use_time": False}, {"use_types": False}, {"n_heads": 4}])
def test_serving_reads_the_last_position_of_the_full_encoding(over):
    """`encode(..., last=True)` (what serve, the exported graphs and the evaluation read) equals the full
    encoding's last position, with left padding of different lengths in one batch."""
    model = small_model(**over)
    items, types, times = (torch.cat(parts) for parts in zip(*(sequence(n, 8, n) for n in (1, 3, 8))))
    with torch.no_grad():
        table = model.item_table()
        full = model.encode(items, types, times, table)[:, -1]
        last = model.encode(items, types, times, table, last=True)[:, 0]
    torch.testing.assert_close(last, full, rtol=0, atol=1e-5)
    assert not torch.allclose(last[0], last[1])  # the rows differ: the comparison is not vacuous


def test_the_candidate_ranking_counts_a_sampled_candidate_once():
    """With the whole catalogue as the mass sample (weight 1 each), ranking any subset of
    candidates gives exactly `serve`'s scores for them: a candidate that is also in the sample
    counts once. (Counted twice, the shares leaned toward the candidates' categories and the
    approximate top 10 left the exact one, README: Scale.)"""
    model = small_model()
    model.beta.fill_(1.5)  # the re-weighting on, as a fitted package has it
    items, types, times = (torch.cat(parts) for parts in zip(*(sequence(n, 8, n) for n in (2, 5, 8))))
    with torch.no_grad():
        out = model.serve(items, types, times)
        table = model.item_table()[1:]
        everyone = torch.arange(table.shape[0])
        slots = everyone.clone()
        mass = (table, model.item_cat[1:], torch.ones(table.shape[0]), slots)
        candidates = torch.stack([torch.randperm(table.shape[0], generator=torch.Generator().manual_seed(r))[:6]
                                  for r in range(3)])
        got = model.rank_candidates(out["user"], items, candidates, table[candidates], mass=mass)
        want = out["scores"].gather(1, candidates)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        # and without the fix's mask the same inputs would differ: the check is not vacuous
        unmasked = (table, model.item_cat[1:], torch.ones(table.shape[0]), torch.full_like(slots, -1))
        assert not torch.allclose(model.rank_candidates(out["user"], items, candidates, table[candidates],
                                                        mass=unmasked), want, atol=1e-3)


def test_the_item_graph_links_training_neighbours_both_ways_and_nothing_held_out(tiny):
    edges, weights = tiny.item_transitions()
    pairs = set(zip(*edges.tolist()))
    for u in range(len(tiny.users)):
        seq = tiny.items[u][: tiny.train_end(u)].tolist()
        for a, b in itertools.pairwise(seq):
            assert a == b or {(a, b), (b, a)} <= pairs
    held_out = {(int(tiny.items[u][i - 1]), int(tiny.items[u][i])) for u in range(len(tiny.users))
                for i in range(tiny.train_end(u), len(tiny.items[u]))}
    in_training = {(int(a), int(b)) for u in range(len(tiny.users))
                   for a, b in itertools.pairwise(tiny.items[u][: tiny.train_end(u)])}
    either_way = in_training | {(b, a) for a, b in in_training}
    leaked = {p for p in held_out - either_way if p[0] != p[1]}
    assert leaked and not leaked & pairs  # the held-out steps that training never took are no edges
    assert (edges != 0).all() and (weights > 0).all()
    degree = np.bincount(edges[0], minlength=tiny.n_items + 1)
    assert degree[0] == 0


def test_the_item_graph_adds_each_items_weighted_neighbours_to_its_row():
    torch.manual_seed(0)
    edges = torch.tensor([[1, 2, 2, 3], [2, 1, 3, 2]])
    weights = torch.tensor([0.5, 0.5, 0.25, 0.25])
    plain = small_model(graph_weight=0.0)
    cfg = ModelConfig(**{**plain.cfg.__dict__, "graph_weight": 0.4})
    linked = ShiftRec(cfg, plain.item_tags, item_categories=plain.item_cat, item_graph=(edges, weights)).eval()
    linked.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        base, table = plain.item_table(), linked.item_table()
    torch.testing.assert_close(table[2], base[2] + 0.4 * (0.5 * base[1] + 0.25 * base[3]))
    torch.testing.assert_close(table[1], base[1] + 0.4 * 0.5 * base[2])
    torch.testing.assert_close(table[[0, 4, 20]], base[[0, 4, 20]])  # padding and unlinked items unchanged
    again = ShiftRec.from_state(cfg, linked.state_dict())
    torch.testing.assert_close(again.item_table(), linked.item_table())
    other = ShiftRec(cfg, plain.item_tags, item_categories=plain.item_cat,
                     item_graph=(torch.tensor([[4, 5, 5, 6], [5, 4, 6, 5]]), weights))
    other.load_state_dict(linked.state_dict())  # edges of the same shape loaded in place
    torch.testing.assert_close(other.item_table(), linked.item_table())
    torch.testing.assert_close(other.item_table(torch.tensor([2, 5])), linked.item_table()[[2, 5]])


def test_a_window_links_items_further_apart_at_a_fraction_of_a_step(tiny):
    """Window 2: each pair two training events apart counts 1/2, neighbours 1; LightGCN-normalised."""
    counts: dict[tuple[int, int], float] = {}
    for u in range(len(tiny.users)):
        if not tiny.trains_on(u):
            continue
        seq = tiny.items[u][: tiny.train_end(u)].tolist()
        for gap in (1, 2):
            for a, b in zip(seq, seq[gap:]):
                if a != b:
                    for pair in ((a, b), (b, a)):
                        counts[pair] = counts.get(pair, 0.0) + 1.0 / gap
    degree: dict[int, float] = {}
    for (a, _), c in counts.items():
        degree[a] = degree.get(a, 0.0) + c
    edges, weights = tiny.item_transitions(window=2)
    got = {(int(a), int(b)): float(w) for a, b, w in zip(*edges, weights)}
    assert got.keys() == counts.keys()
    for (a, b), c in counts.items():
        assert got[(a, b)] == pytest.approx(c / np.sqrt(degree[a] * degree[b]), rel=1e-6)
    assert len(got) > tiny.item_transitions()[0].shape[1]  # the window added edges
    with pytest.raises(ValueError, match="window must be >= 1"):
        tiny.item_transitions(window=0)


def test_two_hops_add_the_squared_weight_times_the_two_step_neighbours():
    edges = torch.tensor([[1, 2, 2, 3], [2, 1, 3, 2]])
    weights = torch.tensor([0.5, 0.5, 0.25, 0.25])
    plain = small_model(graph_weight=0.0)
    cfg = ModelConfig(**{**plain.cfg.__dict__, "graph_weight": 0.4, "graph_hops": 2})
    linked = ShiftRec(cfg, plain.item_tags, item_categories=plain.item_cat, item_graph=(edges, weights)).eval()
    linked.load_state_dict(plain.state_dict(), strict=False)
    dense = torch.zeros(21, 21)
    dense[edges[1], edges[0]] = weights
    with torch.no_grad():
        base = plain.item_table()
        torch.testing.assert_close(linked.item_table(), base + 0.4 * dense @ base + 0.16 * dense @ dense @ base)


def test_a_few_rows_of_the_linked_table_equal_the_whole_tables_rows():
    """Sampled softmax builds only the rows a batch uses: with the graph, each of them must still
    carry its neighbours (who may be outside the rows), in any order, repeated or not."""
    g = torch.Generator().manual_seed(1)
    src, dst = torch.randint(1, 21, (2, 60), generator=g)
    keep = src != dst
    edges = torch.stack([torch.cat([src[keep], dst[keep]]), torch.cat([dst[keep], src[keep]])])
    weights = torch.rand(edges.shape[1], generator=g)
    model = small_model()
    cfg = ModelConfig(**{**model.cfg.__dict__, "graph_weight": 0.5, "loss": "sampled"})
    linked = ShiftRec(cfg, model.item_tags, item_categories=model.item_cat, item_graph=(edges, weights)).eval()
    rows = torch.tensor([7, 0, 3, 20, 7, 12, 1])
    with torch.no_grad():
        whole = linked.item_table()
        torch.testing.assert_close(linked.item_table(rows), whole[rows])
        assert not torch.allclose(whole, linked._content_table())  # the graph did move rows
    linked.train()  # and the sampled loss trains through it
    items = torch.randint(0, 21, (4, 8), generator=g)
    linked.loss(items, (items > 0).long(), torch.zeros_like(items), torch.randint(1, 21, (4, 8), generator=g)).backward()
    assert linked.item_emb.weight.grad is not None and linked.item_emb.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("over", "message"), [({"graph_weight": -0.1}, "graph_weight must be >= 0"),
                                               ({"graph_text_k": -1}, "graph_text_k and graph_text_weight"),
                                               ({"graph_text_weight": -0.5}, "graph_text_k and graph_text_weight"),
                                               ({"graph_hops": 0}, "graph_hops must be >= 1"),
                                               ({"graph_hops": 2, "loss": "sampled"}, "graph_hops must be >= 1")])
def test_a_bad_item_graph_setting_is_refused(over, message):
    cfg = ModelConfig(n_items=20, n_tags=4, n_categories=3, max_len=8, dim=16, use_text=False, **over)
    with pytest.raises(ValueError, match=message):
        ShiftRec(cfg, torch.randint(0, 5, (21, 2)), item_graph=(torch.tensor([[1], [2]]), torch.tensor([1.0])))


def test_without_edges_the_graph_changes_nothing_and_a_state_missing_it_is_refused():
    plain = small_model(graph_weight=0.0)
    cfg = ModelConfig(**{**plain.cfg.__dict__, "graph_weight": 0.5})
    empty = ShiftRec(cfg, plain.item_tags, item_categories=plain.item_cat).eval()  # no graph given
    empty.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(empty.item_table(), plain.item_table())
        torch.testing.assert_close(empty.item_table(torch.tensor([3, 0, 9])), plain.item_table()[[3, 0, 9]])
    with pytest.raises(RuntimeError, match="graph_edges"):  # a saved graph model without its graph
        ShiftRec.from_state(cfg, plain.state_dict())
