"""Temporal fine-tuning: a model trained on the events before a time cut, fine-tuned on the
targets after it (older events as context) or on all events, against the scratch run."""

from pathlib import Path
from typing import Any

from training.experiments.cross_domain import text_overrides
from training.experiments.transfer_runs import load, load_state, ranks_on_test, save_state, summary, train_run
from training.experiments.views import events_before


def base(task: dict[str, Any]) -> dict[str, Any]:
    data = events_before(load(task["target"]), task["cut"])
    trained = train_run(data, text_overrides(task), task["seed"], task["threads"])
    save_state(trained, data, Path(task["work"]) / "states" / "temporal_base.pt")
    return {"best_valid_NDCG@10": trained.best_valid_ndcg10, "train_seconds": trained.seconds,
            "users": len(data.users), "events": int(sum(len(s) for s in data.items))}


def finetune(task: dict[str, Any]) -> dict[str, Any]:
    from training.data import training_arrays

    data = load(task["target"])
    if task["new_events_only"]:
        data = data.with_train_since(task["cut"])
    targets = training_arrays(data, 1)[1]
    warm = load_state(Path(task["work"]) / "states" / "temporal_base.pt")
    trained = train_run(data, text_overrides(task), task["seed"], task["threads"], warm)
    out = summary(trained, ranks_on_test(trained, data))
    out["train_users"] = len(targets)
    return out


def time_to_reach(history: list[dict[str, float]], level: float) -> float | None:
    """Elapsed seconds at the end of the first epoch whose validation NDCG@10 reaches `level`."""
    for row in history:
        if row["valid_NDCG@10"] >= level:
            return row["elapsed_seconds"]
    return None
