"""The demo's PNG: each featured shopper's recent interest over categories through time, with
the drift score, the model's shift probability and its probability of the planted category, and
the moment a shift was planted."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.inference.profile import interest_profile


@dataclass
class ShopperTimeline:
    user_id: str
    times_us: list[int]
    categories: list[str]
    event_types: list[int]
    item_ids: list[str]
    planted_at_us: int | None  # None: a shopper whose interest was left alone
    label: str
    shift_probability: list[float] = field(default_factory=list)  # the model's, after each event
    new_category_probability: list[float] = field(default_factory=list)  # P(next in the planted category)


def draw(timelines: Sequence[ShopperTimeline], recent_window: int, path: Path) -> Path:
    """One panel per shopper: stacked recent-window category shares, drift score on the right axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({c for t in timelines for c in t.categories if c})
    palette = plt.get_cmap("tab20")  # 20 distinct colours
    colours = dict(zip(names, (palette(i) for i in range(palette.N)), strict=False))
    fig, axes = plt.subplots(len(timelines), 1, figsize=(11, 2.8 * len(timelines)), squeeze=False)
    for ax, timeline in zip(axes[:, 0], timelines, strict=True):
        n = len(timeline.categories)
        shares = np.zeros((len(names), n))
        drift = np.zeros(n)
        for t in range(1, n + 1):
            profile = interest_profile(timeline.categories[:t], timeline.event_types[:t], recent_window)
            for category, weight in profile.recent:
                shares[names.index(category), t - 1] = weight
            drift[t - 1] = profile.drift_score
        # x = event number: a burst of minutes and a month of browsing both stay readable
        # each event's state holds until the next one; repeat the last so it has width too
        x = np.arange(1, n + 2)
        shares = np.concatenate([shares, shares[:, -1:]], axis=1)
        drift = np.append(drift, drift[-1])
        ax.stackplot(x, shares, labels=names, colors=[colours[c] for c in names], alpha=0.85, step="post")
        ax.set_ylim(0, 1)
        ax.set_ylabel("recent share")
        days = (timeline.times_us[-1] - timeline.times_us[0]) / 86_400e6
        ax.set_title(f"{timeline.user_id} — {timeline.label} ({n} events over {days:.0f} days)",
                     fontsize=10, loc="left")
        right = ax.twinx()
        right.step(x, drift, where="post", color="black", linewidth=1.8, label="drift score")
        if len(timeline.shift_probability) == n:
            shift = np.append(timeline.shift_probability, timeline.shift_probability[-1])
            right.step(x, shift, where="post", color="tab:blue", linewidth=1.6, linestyle="--")
        if len(timeline.new_category_probability) == n:
            planted = np.append(timeline.new_category_probability, timeline.new_category_probability[-1])
            right.step(x, planted, where="post", color="tab:red", linewidth=1.6, linestyle=":")
        right.set_ylim(0, 1)
        right.set_ylabel("drift / shift probability")
        if timeline.planted_at_us is not None:
            first = next(i for i, t in enumerate(timeline.times_us) if t >= timeline.planted_at_us)
            ax.axvline(first + 1, color="red", linestyle="--", linewidth=1.2)
        ax.set_xlim(1, n + 1)
    axes[-1, 0].set_xlabel("event number (red dashes: first event of the planted shift)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    lines = [plt.Line2D([], [], color="black"), plt.Line2D([], [], color="tab:blue", linestyle="--"),
             plt.Line2D([], [], color="tab:red", linestyle=":")]
    fig.legend(handles + lines,
               labels + ["drift score", "shift probability (next event leaves the last 5 events' categories)",
                         "P(next event in the planted category)"],
               loc="upper center", ncol=min(len(names), 8), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
