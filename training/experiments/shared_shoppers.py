"""Shoppers present in both domains: the fine-tuned target model reading each one's earlier
source-domain history merged with the target history, against the target history alone."""

from pathlib import Path
from typing import Any

import numpy as np

from training.experiments.transfer_runs import load, load_state


def run(task: dict[str, Any]) -> dict[str, Any]:
    """Score the target items for shoppers present in both domains, from their target history
    alone and from it merged (by time) with their earlier source-domain events. Source items
    enter the target model through their content (text projection) only."""
    import torch

    from shared.encoding import pad_left
    from training.data import EvalSet, Inputs, eval_set
    from training.evaluation import mask_history
    from training.metrics import ranking_metrics, target_ranks
    from training.model import ModelConfig, saved_config
    from training.text import item_text_table
    from training.train import build_model

    torch.set_num_threads(task["threads"])
    target, source = load(task["target"]), load(task["source"])
    state = load_state(Path(task["work"]) / "states" / task["model"])
    cfg = ModelConfig(**saved_config(state["model_config"]))
    model = build_model(cfg, target, task["threads"])
    model.load_state_dict(state["state_dict"])
    model.eval()
    source_text = torch.from_numpy(item_text_table(source.item_titles)[1:])
    with torch.no_grad():
        table = model.item_table()  # (Nt+1, D)
        union = torch.cat([table, model.text_proj(source_text)])  # source item j -> row Nt + j

    es = eval_set(target, "test", cfg.max_len)
    source_user = {u: i for i, u in enumerate(source.users)}
    rows = [r for r, u in enumerate(es.users) if target.users[u] in source_user]
    merged_items, merged_types, merged_times, with_source = [], [], [], 0
    for r in rows:
        u = es.users[r]
        t_end = len(es.histories[r])
        s = source_user[target.users[u]]
        cut = int(np.searchsorted(source.times[s], target.times[u][t_end], side="left"))  # strictly earlier
        with_source += cut > 0
        items = np.r_[source.items[s][:cut] + target.n_items, target.items[u][:t_end]]
        types = np.r_[source.types[s][:cut], target.types[u][:t_end]]
        times = np.r_[source.times[s][:cut], target.times[u][:t_end]]
        order = np.argsort(times, kind="stable")
        merged_items.append(items[order])
        merged_types.append(types[order])
        merged_times.append(times[order])
    subset = EvalSet(es.users[rows], es.inputs.rows(np.array(rows, dtype=np.int64)), es.targets[rows],
                     [es.histories[r] for r in rows])
    alone = subset.inputs
    merged = Inputs(*(pad_left(x, cfg.max_len) for x in (merged_items, merged_types, merged_times)))

    def ranks(inputs: Inputs) -> dict[str, float]:
        with torch.no_grad():
            h = model.encode(*(torch.from_numpy(a) for a in (inputs.items, inputs.types, inputs.times)), union)[:, -1]
            scores = (h @ table[1:].T).numpy()  # (U, Nt): target items only
        mask_history(scores, subset, np.arange(len(rows)))
        return ranking_metrics(*target_ranks(scores, subset.targets - 1), (10, 20))

    return {"shoppers": len(rows), "with_earlier_source_events": int(with_source),
            "target_history_only": ranks(alone), "with_source_history": ranks(merged)}
