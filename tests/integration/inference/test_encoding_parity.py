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
