"""The trainer's dataset and the serving runtime encode the same events into identical model
inputs (both call shared.encoding; this catches either side growing its own rules)."""

import numpy as np
import pytest

from shared import model_package as pkg
from shared.store import EventRecord, ItemRecord

pytest.importorskip("onnxruntime")


def test_training_dataset_and_runtime_encode_alike(pipeline) -> None:
    from services.inference.runtime import ModelRuntime, Step
    from training.data import HOLDOUT_SERVING, eval_set, from_records

    runtime = ModelRuntime(pkg.resolve_package(pipeline.model_dir), device="cpu")
    vocab = runtime.item_vocab
    rng = np.random.default_rng(0)
    events = []
    # Long histories (truncated to max_len), short ones (padded), every event type and a few out of
    # the model's range (clipped), times in microseconds that are not whole seconds, equal times.
    for u, length in enumerate([1, 2, 3, runtime.max_len - 1, runtime.max_len, runtime.max_len + 7, 60]):
        start = 1_700_000_000_000_000 + u
        for k in range(length):
            events.append(EventRecord(
                event_id=f"e{u}-{k}", user_id=f"u{u}", item_id=str(vocab[rng.integers(len(vocab))]),
                event_type=int(rng.choice([1, 2, 3, 4, 5, 6, pkg.N_EVENT_TYPES, 99])),
                occurred_at_us=start + (k // 2) * 1_234_567,
            ))
    data = from_records(events, [ItemRecord(i) for i in vocab], holdout=HOLDOUT_SERVING)
    assert data.item_vocab == vocab  # the same vocabulary, so the same indices

    es = eval_set(data, "valid", runtime.max_len)  # each history before its last event
    assert len(es.users) == 6  # everyone but the one-event user
    histories = []
    for u in es.users:
        mine = [e for e in events if e.user_id == data.users[u]][:-1]
        steps = [Step(e.item_id, e.event_type, e.occurred_at_us) for e in mine]
        # items the package does not know are dropped by the runtime, wherever they are
        steps.insert(len(steps) // 2, Step("not-in-the-vocabulary", 1, steps[-1].occurred_at_us))
        histories.append(steps)
    feeds = runtime.encode(histories)

    np.testing.assert_array_equal(feeds[pkg.INPUT_ITEM_IDS], es.inputs.items)
    np.testing.assert_array_equal(feeds[pkg.INPUT_EVENT_TYPES], es.inputs.types)
    np.testing.assert_array_equal(feeds[pkg.INPUT_TIMESTAMPS], es.inputs.times)
    assert es.inputs.types.max() == pkg.N_EVENT_TYPES - 1  # clipping happened
    assert (es.inputs.items[:, 0] == pkg.PADDING_INDEX).any() and (es.inputs.items[:, 0] != 0).any()


def test_cut_padding_drops_only_the_padding_every_row_carries() -> None:
    from shared.encoding import cut_padding, pad_left

    items = pad_left([np.array([5, 6, 7]), np.array([8, 9, 10, 11, 12])], 8)
    feeds = {name: items * (k + 1) for k, name in enumerate(pkg.INPUT_NAMES)}
    cut = cut_padding(feeds)
    assert [v.shape for v in cut.values()] == [(2, 5)] * 3  # the longer row's five events, nothing of them lost
    for name in pkg.INPUT_NAMES:
        np.testing.assert_array_equal(cut[name], feeds[name][:, 3:])
    empty = cut_padding({name: np.zeros((2, 8), dtype=np.int64) for name in pkg.INPUT_NAMES})
    assert [v.shape for v in empty.values()] == [(2, 1)] * 3  # a graph needs one column


def test_the_runtime_cuts_padding_and_answers_as_on_the_whole_window(pipeline, tmp_path) -> None:
    """Served on inputs cut to their longest history, the graph gives the whole window's outputs;
    a package whose graph has a fixed event axis (exported before) is run on the whole window."""
    import shutil

    import onnx

    from services.inference.runtime import ModelRuntime, Step

    package = pkg.resolve_package(pipeline.model_dir)
    runtime = ModelRuntime(package, device="cpu")
    assert runtime.cuts_padding
    vocab = runtime.item_vocab
    histories = [[Step(vocab[(3 * u + k) % len(vocab)], 1 + k % 6, 1_700_000_000_000_000 + 60_000_000 * k)
                  for k in range(n)] for u, n in enumerate([1, 3, 4])]
    feeds = runtime.encode(histories)
    assert feeds[pkg.INPUT_ITEM_IDS].shape[1] == runtime.max_len > 4
    whole = runtime.session.run(list(pkg.ALL_OUTPUT_NAMES), feeds)  # the graph on the whole window
    scores, probabilities, user = runtime.run(feeds)
    for got, want in zip((scores, probabilities, user), whole):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    for got, want in zip(runtime.run_shift(feeds) or (), whole[3:]):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

    fixed = tmp_path / package.name
    shutil.copytree(package, fixed)
    graph = onnx.load(str(fixed / pkg.MODEL_FILE))
    for tensor in graph.graph.input:
        tensor.type.tensor_type.shape.dim[1].dim_value = runtime.max_len  # replaces the symbolic name
    onnx.save(graph, str(fixed / pkg.MODEL_FILE))
    old = ModelRuntime(fixed, device="cpu")
    assert not old.cuts_padding
    old.check_parity()
    np.testing.assert_allclose(old.run(feeds)[0], scores, atol=1e-5, rtol=0)
