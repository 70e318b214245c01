"""Tiny generated datasets in the S3-Rec file format, shared by the training tests."""

import json

import numpy as np
import pytest

from training.data import HOLDOUT_TEST, load_files

TINY = {"dim": 16, "n_layers": 1, "max_len": 12}
DAY = 86_400


def write_domain(root, name: str, *, seed: int, asin_prefix: str, titles: tuple[str, str]) -> None:
    """S3-Rec format files: 80 users drifting between two item groups with their attributes;
    group g's items have titles starting with titles[g]. Reviewer ids R00001.. are the same in
    every domain written, so two domains share their shoppers."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    n_items = 60
    seqs, stamps = [], []
    for user in range(1, 81):
        length = int(rng.integers(4, 16))
        group = int(rng.integers(0, 2))
        items, t = [], 1_400_000_000 + int(rng.integers(0, 100)) * DAY
        times = []
        for _ in range(length):
            if rng.random() < 0.2:
                group = 1 - group  # an interest shift
            items.append(int(rng.integers(1, 31)) + 30 * group)
            t += int(rng.integers(0, 20)) * DAY
            times.append(t)
        seqs.append(f"{user} " + " ".join(map(str, items)))
        stamps.append(f"{user} " + " ".join(map(str, times)))
    (root / f"{name}.txt").write_text("\n".join(seqs) + "\n")
    (root / f"{name}_timestamps.txt").write_text("\n".join(stamps) + "\n")
    attrs = {str(i): [1 + (i - 1) // 30, 3 + i % 5] for i in range(1, n_items + 1)}
    (root / f"{name}_item2attributes.json").write_text(json.dumps(attrs))
    rows = ["s3rec_item_id\tasin\ttitle\tp5_textual_id\ts3rec_attribute_ids"]
    rows += [f"{i}\t{asin_prefix}{i:08d}\t{titles[(i - 1) // 30]} {i}\t{titles[(i - 1) // 30]} {i}\t"
             f"{' '.join(map(str, attrs[str(i)]))}" for i in range(1, n_items + 1)]
    (root / f"{name}_items.tsv").write_text("\n".join(rows) + "\n")
    users = ["s3rec_user_id\treviewer_id"] + [f"{u}\tR{u:05d}" for u in range(1, 81)]
    (root / f"{name}_users.tsv").write_text("\n".join(users) + "\n")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_domain(root, "Tiny", seed=7, asin_prefix="B", titles=("red lipstick", "hiking boots"))
    return root


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_files(f"s3rec:{tiny_dir / 'Tiny'}", holdout=HOLDOUT_TEST)


