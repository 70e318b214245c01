"""What every transfer run does: load a domain, train on CPU in a worker, keep weights where a
later run picks them up, and summarize the test metrics. Torch is imported inside (workers
are spawned processes)."""

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.data import SequenceData
    from training.evaluation import RawEval
    from training.train import Trained


def load(spec: str) -> "SequenceData":
    from training.data import load_files

    return load_files(spec)


def train_run(data: "SequenceData", overrides: dict[str, Any], seed: int, threads: int,
              warm_start: dict[str, Any] | None = None) -> "Trained":
    from training.model import ModelConfig
    from training.train import TrainConfig, split_overrides, train

    model_over, train_over = split_overrides(overrides)
    cfg = TrainConfig(**{**train_over, "seed": seed, "threads": threads, "device": "cpu"})
    return train(data, ModelConfig(**model_over), cfg, progress=False, warm_start=warm_start)


def save_state(trained: "Trained", data: "SequenceData", path: Path, pretrain: bool = False) -> None:
    """The same dict as a package's weights file, so `load_warm_start` takes it."""
    import torch

    from training.export import weights_state

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(weights_state(trained.model, data, path.stem, pretrain=pretrain), path)


def load_state(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def ranks_on_test(trained: "Trained", data: "SequenceData") -> "RawEval":
    import torch

    from training import evaluation
    from training.train import torch_scorer

    return evaluation.collect(data, torch_scorer(trained.model, torch.device("cpu")), "test",
                              trained.model_cfg.max_len)


def summary(trained: "Trained", raw: "RawEval") -> dict[str, Any]:
    from training import evaluation

    history = trained.history
    return {"metrics": evaluation.summarize(raw), "best_epoch": trained.best_epoch, "epochs_run": len(history),
            "train_seconds": trained.seconds, "best_valid_NDCG@10": trained.best_valid_ndcg10,
            "history": history}
