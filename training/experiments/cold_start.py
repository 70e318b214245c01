"""Cold-start items: a share of the target's items never seen in training (only as test
targets), scored from their content by the text model, with id dropout, and by the default
(attributes only) model."""

from typing import Any

from training.experiments.cross_domain import text_overrides
from training.experiments.transfer_runs import load, ranks_on_test, summary, train_run
from training.experiments.views import hold_out_items

ARMS = ("text", "text-id-dropout", "default")  # default: attributes, no text
ID_DROPOUT = 0.3


def run(task: dict[str, Any]) -> dict[str, Any]:
    from training.data import eval_set
    from training.metrics import ranking_metrics

    data, held = hold_out_items(load(task["target"]), task["item_fraction"], task["seed"])
    text = text_overrides(task)
    over = {"text": text, "text-id-dropout": {**text, "id_dropout": ID_DROPOUT}}.get(task["arm"], task["overrides"])
    trained = train_run(data, over, task["seed"], task["threads"])
    raw = ranks_on_test(trained, data)
    cold = held[eval_set(data, "test", trained.model_cfg.max_len).targets]
    out = summary(trained, raw)
    out["cold"] = {**ranking_metrics(raw.greater[cold], raw.ties[cold], (10, 20)), "users": int(cold.sum())}
    out["held_items"] = int(held.sum())
    out["random_HR@10"] = 10 / data.n_items
    return out
