"""The model's input encoding, the one implementation of the contract in `shared.model_package`:
the trainer's dataset, the exporter's parity sample and the inference runtime all call it.

An event becomes (item index, event type, time): the item's index is PADDING_INDEX + 1 + its
position in the vocabulary (items not in it are dropped), the event type is clipped to the
model's N_EVENT_TYPES, microseconds become unix seconds. A sequence is left-padded to max_len
with PADDING_INDEX: the most recent event is in the last column. A graph exported with a
dynamic event axis also takes a narrower window (`cut_padding`): the columns of padding that every
row carries add nothing, since positions count back from the window's end. Numpy only, no torch.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np

from shared.model_package import (
    INPUT_EVENT_TYPES,
    INPUT_ITEM_IDS,
    INPUT_TIMESTAMPS,
    N_EVENT_TYPES,
    PADDING_INDEX,
)

US_PER_SECOND = 1_000_000


class Event(Protocol):
    """What the encoding reads of an event (the store's EventRecord, the runtime's Step)."""

    @property
    def item_id(self) -> str: ...

    @property
    def event_type(self) -> int: ...

    @property
    def occurred_at_us(self) -> int: ...


def item_index(item_vocab: Iterable[str]) -> dict[str, int]:
    """item_id -> model index (vocabulary position + 1; PADDING_INDEX is no item)."""
    return {item: PADDING_INDEX + 1 + i for i, item in enumerate(item_vocab)}


def encode_events(
    events: Iterable[Event], index: Mapping[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items, types, times), each (n,) int64, for the events whose item is in `index`, in the
    given order (oldest first)."""
    known = [e for e in events if e.item_id in index]
    items = np.array([index[e.item_id] for e in known], dtype=np.int64)
    types = np.array([e.event_type for e in known], dtype=np.int64).clip(PADDING_INDEX, N_EVENT_TYPES - 1)
    times = np.array([e.occurred_at_us // US_PER_SECOND for e in known], dtype=np.int64)
    return items, types, times


def pad_left(seqs: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """(len(seqs), max_len) int64, each sequence's last max_len values right-aligned, padding before."""
    out = np.full((len(seqs), max_len), PADDING_INDEX, dtype=np.int64)
    for row, seq in enumerate(seqs):
        tail = seq[-max_len:]
        if len(tail):
            out[row, max_len - len(tail):] = tail
    return out


def model_inputs(items: np.ndarray, types: np.ndarray, times: np.ndarray) -> dict[str, np.ndarray]:
    """Left-padded (B, max_len) arrays under the model's input names."""
    return {INPUT_ITEM_IDS: items, INPUT_EVENT_TYPES: types, INPUT_TIMESTAMPS: times}


def encode_histories(
    histories: Sequence[Iterable[Event]], index: Mapping[str, int], max_len: int
) -> dict[str, np.ndarray]:
    """The model inputs for a batch of histories (oldest event first in each)."""
    encoded = [encode_events(history, index) for history in histories]
    return model_inputs(*(pad_left([e[k] for e in encoded], max_len) for k in range(3)))


def cut_padding(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same left-padded inputs without the leading columns that are padding in every row
    (at least one column is kept). Beauty histories average 9 events of a 50-event window."""
    used = np.flatnonzero(feeds[INPUT_ITEM_IDS].any(axis=0))
    first = int(used[0]) if len(used) else feeds[INPUT_ITEM_IDS].shape[1] - 1
    return {name: value[:, first:] for name, value in feeds.items()}
