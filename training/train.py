"""Train the ShiftRec model as a straight line: defaults, setup, data, model, loop with early
stopping on validation NDCG@10, evaluation, calibration, export."""

import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from training import evaluation
from training.data import HOLDOUT_TEST, Inputs, SequenceData, eval_set, training_arrays
from training.model import ModelConfig, ShiftRec, saved_config


@dataclass
class TrainConfig:
    epochs: int = 200  # upper bound; early stopping usually ends a run sooner
    batch_size: int = 128
    lr: float = 5e-4  # with plateau_decay 0.5, beat 1e-3 on validation on Beauty and Sports (training/RESULTS.md)
    weight_decay: float = 0.0  # AdamW decoupled decay; dropout does the regularising here
    patience: int = 5  # epochs without a better validation NDCG@10 before stopping (the default
    # model peaks early on Beauty; its best epochs are in the README)
    plateau_decay: float = 0.5  # after an epoch that does not beat the best validation NDCG@10, the
    # learning rate is multiplied by this (1 = constant learning rate)
    ema: float = 0.0  # > 0: validation, early stopping and the package use an exponential moving
    # average of the weights, updated after every step with this decay (0 = the weights themselves)
    max_minutes: float = 18.0  # wall-clock budget for the loop (one run's 20-minute goal, README)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 2  # CPU threads for torch


@dataclass
class Trained:
    model: ShiftRec
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    best_valid_ndcg10: float = 0.0
    seconds: float = 0.0
    device: str = "cpu"


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Route `--config` JSON keys to the model or the training config; unknown keys fail."""
    model_keys = {f.name for f in fields(ModelConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - model_keys - train_keys
    if unknown:
        raise ValueError(f"unknown config fields: {sorted(unknown)}")
    return ({k: v for k, v in overrides.items() if k in model_keys},
            {k: v for k, v in overrides.items() if k in train_keys})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    return torch.device(name)


def to_tensors(inputs: Inputs, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in
                 (inputs.items, inputs.types, inputs.times))


def torch_scorer(model: ShiftRec, device: torch.device) -> evaluation.Scorer:
    """A harness scorer running the model's inference path under no_grad, for the weights as
    they are now: the item table is built once, here (a million-item table costs about a second;
    make a new scorer after the weights change). Columns that are padding in every row are cut
    first (positions count back from the end, so the result is the same); the harness batches
    users of similar history length to make that count."""
    model.eval()
    with torch.no_grad():
        table = model.item_table()

    def score(inputs: Inputs) -> np.ndarray:
        model.eval()
        width = max(int((inputs.items > 0).sum(axis=1).max(initial=0)), 1)
        trimmed = Inputs(*(a[:, -width:] for a in (inputs.items, inputs.types, inputs.times)))
        with torch.no_grad():
            scores, _ = model.score(*to_tensors(trimmed, device), table=table)
        return scores.float().cpu().numpy()
    return score


def train(
    data: SequenceData,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    progress: bool = True,
    on_epoch: Any = None,
    warm_start: dict[str, Any] | None = None,
) -> Trained:
    # setup
    if not 0 <= train_cfg.ema < 1:
        raise ValueError(f"ema must be in [0, 1), not {train_cfg.ema!r}")
    torch.manual_seed(train_cfg.seed)
    torch.set_num_threads(train_cfg.threads)
    rng = np.random.default_rng(train_cfg.seed)
    device = resolve_device(train_cfg.device)
    model_cfg = ModelConfig(**{**asdict(model_cfg), "n_items": data.n_items, "n_tags": data.n_tags,
                                "n_categories": len(data.category_vocab())})

    # data
    inputs, targets = training_arrays(data, model_cfg.max_len)
    lengths = (inputs.items > 0).sum(axis=1)
    valid_set = eval_set(data, "valid", model_cfg.max_len)

    # model
    model = build_model(model_cfg, data, train_cfg.threads)
    if warm_start is not None:
        load_warm_start(model, warm_start, data)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    # the buffers are constants of the catalogue (copied once, not averaged; with a large
    # catalogue's text table that copy is the memory `ema` costs)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(train_cfg.ema)) if train_cfg.ema > 0 else None
    judged = model if ema is None else cast(ShiftRec, ema.module)  # the weights validation reads

    # loop
    result = Trained(model, model_cfg, train_cfg, device=str(device))
    best_state = copy.deepcopy(model.state_dict())
    bad_epochs, started = 0, time.perf_counter()
    n_batches = math.ceil(len(lengths) / train_cfg.batch_size)
    # the bar's total is the epoch at which early stopping ends the run unless validation improves
    # again, so its ETA is a real "done by" estimate, not one against the epoch cap
    bar = _progress(min(train_cfg.epochs, train_cfg.patience), progress)
    for epoch in range(1, train_cfg.epochs + 1):
        model.train()
        t0, total = time.perf_counter(), 0.0
        for rows in _batches(lengths, train_cfg.batch_size, rng):
            width = max(int(lengths[rows].max()), 1)  # drop columns that are padding everywhere
            batch = Inputs(*(a[rows, -width:] for a in (inputs.items, inputs.types, inputs.times)))
            y = torch.from_numpy(targets[rows, -width:]).to(device)
            loss = model.loss(*to_tensors(batch, device), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            total += float(loss.detach())
        train_seconds = time.perf_counter() - t0
        greater, ties = evaluation.ranks(valid_set, torch_scorer(judged, device))  # this epoch's weights
        valid = evaluation.metrics.ranking_metrics(greater, ties, (10,))
        row = {"epoch": epoch, "loss": total / max(n_batches, 1), "valid_NDCG@10": valid["NDCG@10"],
               "valid_HR@10": valid["HR@10"], "epoch_seconds": train_seconds, "lr": optimizer.param_groups[0]["lr"],
               "elapsed_seconds": time.perf_counter() - started}
        result.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if valid["NDCG@10"] > result.best_valid_ndcg10:
            result.best_valid_ndcg10, result.best_epoch = valid["NDCG@10"], epoch
            best_state, bad_epochs = copy.deepcopy(judged.state_dict()), 0
        else:
            bad_epochs += 1
            for group in optimizer.param_groups:
                group["lr"] *= train_cfg.plateau_decay
        bar.set_postfix(loss=f"{row['loss']:.4f}", val_ndcg10=f"{valid['NDCG@10']:.4f}",
                        best=f"{result.best_valid_ndcg10:.4f}@{result.best_epoch}")
        bar.total = min(train_cfg.epochs, result.best_epoch + train_cfg.patience)
        bar.update(1)
        if bad_epochs >= train_cfg.patience or row["elapsed_seconds"] > 60 * train_cfg.max_minutes:
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result


def build_model(model_cfg: ModelConfig, data: SequenceData, threads: int = 2) -> ShiftRec:
    """The model with the data's per-item constants: tags, text vectors (when `use_text`) and
    which items the training events know."""
    item_text = None
    if model_cfg.use_text:
        from training.text import item_text_table

        item_text = torch.from_numpy(item_text_table(data.item_titles, threads=threads))
    graph = None
    if model_cfg.graph_weight > 0:
        edges, weights = data.item_transitions(model_cfg.graph_window)
        if model_cfg.graph_text_k > 0 and item_text is not None:
            from training.text import text_neighbours

            text_edges, text_weights = text_neighbours(item_text.numpy(), model_cfg.graph_text_k, threads)
            edges = np.concatenate([edges, text_edges], axis=1)  # a pair in both: the weights add up
            weights = np.concatenate([weights, model_cfg.graph_text_weight * text_weights])
        graph = (torch.from_numpy(edges), torch.from_numpy(weights))
    steps = None
    if model_cfg.step_prior_k > 0:
        starts, cols, values = data.item_steps(model_cfg.step_prior_k)
        steps = (torch.from_numpy(starts), torch.from_numpy(cols), torch.from_numpy(values))
    return ShiftRec(model_cfg, torch.from_numpy(data.item_tags), item_text, torch.from_numpy(data.item_known()),
                    torch.from_numpy(data.item_category_index()), graph, steps)


def load_warm_start(model: ShiftRec, parent: dict[str, Any], data: SequenceData) -> None:
    """Start from a parent package's weights. Item embedding rows are matched by item id; items
    the parent did not have start from zero, i.e. from their content (attributes, text) alone.
    Tag rows are matched by tag name only when the parent is the same domain's model (temporal
    fine-tuning): a `--pretrain` parent comes from another domain, whose tag names mean other
    things, so from it only the domain-free weights carry over (the sequence encoder, the
    type/time inputs and the text projection)."""
    state = model.state_dict()
    rows = {"item_emb.weight": (parent["item_vocab"], data.item_vocab)}
    if not parent.get("pretrain"):
        rows["tag_emb.weight"] = (parent["tag_vocab"], data.tag_vocab)
    # per-item constants come from this data; the step prior's weight is fitted again after training
    skip = {"item_tags", "item_text", "id_mask", "item_cat", "graph_edges", "graph_weights", "step_starts",
            "step_cols", "step_values", "step_weight"} | (
        {"tag_emb.weight"} - set(rows))
    for name, value in parent["state_dict"].items():
        if name not in state or name in skip:
            continue
        if name in rows:
            old_index = {key: i + 1 for i, key in enumerate(rows[name][0])}
            state[name].zero_()
            for new_row, key in enumerate(rows[name][1], start=1):
                if key in old_index:
                    state[name][new_row] = value[old_index[key]]
        elif state[name].shape == value.shape:
            state[name] = value
    model.load_state_dict(state)


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar lengths: rows are shuffled, sorted by length within windows
    of 16 batches, cut into batches, and the batches shuffled. Batches then carry little
    padding, which the loop trims."""
    order = rng.permutation(len(lengths))
    window = 16 * batch_size
    parts = [order[i : i + window] for i in range(0, len(order), window)]
    order = np.concatenate([p[np.argsort(lengths[p], kind="stable")] for p in parts])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="epoch", disable=not enabled, dynamic_ncols=True)


@dataclass
class RunOptions:
    """What one `shiftrec train` run asks for beyond the data and where to publish.

    `finetune_from` (a package or model directory) starts from that package's weights and
    model config and records it as the parent version; it trains on all the training events
    (measured better than `new_events_only`, where only targets newer than the parent's data
    feed the loss and older events are context: that forgot; the figures are in the README,
    see `make bench-transfer`). `pretrain` marks this run's package as a source for
    cross-domain transfer and turns on the item text inputs that make that possible."""

    overrides: dict[str, Any] | None = None  # --config: model and training config fields
    epochs: int | None = None
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    version: str | None = None
    finetune_from: str | None = None
    pretrain: bool = False
    new_events_only: bool = False
    retrieval: bool | None = None  # the package's approximate top-k path: None = by catalogue size


def resolve_configs(
    data: SequenceData, run: RunOptions
) -> tuple[SequenceData, dict[str, Any] | None, ModelConfig, TrainConfig]:
    """(data to train on, the parent's weights or None, model config, training config):
    defaults, with the parent's model config, then --config / flags on top."""
    overrides = run.overrides
    parent = None
    if run.finetune_from is not None:
        from training.export import load_weights

        parent = load_weights(run.finetune_from)
        skip = ("n_items", "n_tags", "n_categories")
        overrides = {**{k: v for k, v in saved_config(parent["model_config"]).items() if k not in skip},
                     **(overrides or {})}
        if run.new_events_only and not parent.get("pretrain") and parent.get("data_until"):
            newer = data.with_train_since(int(parent["data_until"]) + 1)
            if training_arrays(newer, 1)[1].any():
                data = newer
            else:
                print(f"no training events after the parent's data ({parent['data_until']}); "
                      "fine-tuning on all of them", file=sys.stderr)
    if run.pretrain:
        overrides = {"use_text": True, **(overrides or {})}
    return data, parent, *run_configs(run, overrides)


def run_configs(run: RunOptions, overrides: dict[str, Any] | None) -> tuple[ModelConfig, TrainConfig]:
    """Today's defaults with `overrides` on top, and the run's device, seed and epochs."""
    model_over, train_over = split_overrides(overrides or {})
    train_over.update({"device": run.device, "seed": run.seed})
    if run.epochs is not None:
        train_over["epochs"] = run.epochs
    return ModelConfig(**model_over), TrainConfig(**train_over)


def main(*, data: SequenceData, out: str | None, run: RunOptions | None = None) -> dict[str, Any]:
    """Train, evaluate, calibrate and (when `out` is given) publish a package; returns a report."""
    run = run or RunOptions()
    data, parent, model_cfg, train_cfg = resolve_configs(data, run)
    seed, progress, pretrain, version = run.seed, run.progress, run.pretrain, run.version

    # model and loop
    trained = train(data, model_cfg, train_cfg, progress=progress, warm_start=parent)
    dev = torch.device(trained.device)

    # the step prior's weight, then interest migration (P(move) calibration, destination mix and
    # re-weighting, on the distribution with the prior), each fitted on validation
    from training import migration, step_prior

    step_fit = step_prior.fit(trained.model, data, dev)
    migration_fit = migration.fit(trained.model, data, dev)

    # evaluation (test split in the literature setting, validation when training for serving)
    scorer = torch_scorer(trained.model, dev)
    calibration = evaluation.fit_calibration(
        evaluation.collect(data, scorer, "valid", trained.model_cfg.max_len, seed=seed + 1))
    split = "test" if data.holdout == HOLDOUT_TEST else "valid"
    metrics = evaluation.evaluate(data, scorer, trained.model_cfg.max_len, split=split,
                                  calibration=calibration, seed=seed)
    report = {
        "split": split,
        "metrics": metrics,
        "migration": migration.evaluate(trained.model, data, split, dev),
        "migration_fit": migration_fit,
        "step_prior_fit": step_fit,
        "best_epoch": trained.best_epoch,
        "epochs_run": len(trained.history),
        "train_seconds": trained.seconds,
        "seconds_per_epoch": float(np.mean([r["epoch_seconds"] for r in trained.history])),
        "config": {"model": asdict(trained.model_cfg), "train": asdict(trained.train_cfg)},
        "history": trained.history,
        "pretrain": pretrain,
        "train_since": data.train_since,
        "data_until": data.last_timestamp(),
    }

    # export
    if out is not None:
        from training.export import export_package

        package = export_package(trained, data, calibration, report, out, version=version,
                                 parent_version=parent["version"] if parent else None,
                                 retrieval_path=run.retrieval)
        report["package"] = str(package)
    return report


def load_overrides(path: str | None) -> dict[str, Any]:
    return json.loads(Path(path).read_text()) if path else {}
