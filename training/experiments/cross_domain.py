"""Cross-domain transfer: pretrain on the source domain (item text inputs on), then train on
the target from scratch or fine-tune from the pretrained weights, on a fraction of its users."""

from pathlib import Path
from typing import Any

from training.experiments.transfer_runs import load, load_state, ranks_on_test, save_state, summary, train_run
from training.experiments.views import sample_train_users

SCRATCH, FINETUNE = "scratch", "finetune"


def text_overrides(task: dict[str, Any]) -> dict[str, Any]:
    """The task's config overrides with item text inputs on (every transfer model reads text)."""
    return {**task["overrides"], "use_text": True}


def pretrain(task: dict[str, Any]) -> dict[str, Any]:
    data = load(task["source"])
    trained = train_run(data, {**text_overrides(task), "max_minutes": task["pretrain_minutes"]}, task["seed"],
                        task["threads"])
    save_state(trained, data, Path(task["work"]) / "states" / "pretrain.pt", pretrain=True)
    return summary(trained, ranks_on_test(trained, data))


def fraction(task: dict[str, Any]) -> dict[str, Any]:
    work = Path(task["work"])
    data = sample_train_users(load(task["target"]), task["fraction"], task["seed"])
    warm = load_state(work / "states" / "pretrain.pt") if task["arm"] == FINETUNE else None
    trained = train_run(data, text_overrides(task), task["seed"], task["threads"], warm)
    if task.get("save_as"):
        save_state(trained, data, work / "states" / task["save_as"])
    out = summary(trained, ranks_on_test(trained, data))
    out["train_users"] = int(data.train_users.sum())
    return out
