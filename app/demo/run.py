"""The demo: start the three services on embedded defaults (SQLite, CPU), stream a storefront
through IngestEvents, train and publish a model, let inference pick it up, show a few shoppers
before and after their interests move (no retraining in between), say after how many events of
the new category each planted shift was flagged, draw the chart, stop everything."""

import json
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.demo.chart import ShopperTimeline, draw
from app.importer import import_records
from app.processes import run_cli, running_stack
from app.simulator import DAY_US, MINUTE_US, StorefrontSimulator
from services.inference.runtime import ModelRuntime, Step
from shared import model_package as pkg
from shared.clients import open_channel
from shared.datasets import read_s3rec, read_taobao, s3rec_events, s3rec_items
from shared.protos import timestamp_us
from shared.store import EventRecord, ItemRecord
from shiftrec.v1 import features_pb2, features_pb2_grpc, inference_pb2, inference_pb2_grpc

RECENT_WINDOW = 8
BURST = 8  # events in the new category
DETECT_DRIFT = 0.2  # a profile with this much drift and the planted category rising = detected
SIM_MODEL = {"dim": 32, "n_layers": 1, "max_len": 20, "max_minutes": 1.0}
REAL_MODEL = {"dim": 64, "n_layers": 2, "max_len": 50, "max_minutes": 4.0}


@dataclass
class Featured:
    user_id: str
    new_category: str | None  # None: the control shopper, left alone
    planted_at_us: int | None = None


def say(text: str = "") -> None:
    print(text, flush=True)


# -- data ---------------------------------------------------------------------------------------
def simulated(seed: int) -> tuple[list[EventRecord], list[ItemRecord], str]:
    simulator = StorefrontSimulator(seed=seed, items_per_category=40)
    now = time.time_ns() // 1_000
    shoppers = simulator.population(1_000, (12, 40), now - 30 * DAY_US, now - DAY_US)
    source = f"a simulated storefront ({len(shoppers):,} shoppers, {len(simulator.catalogue())} items, 8 categories)"
    return [e for s in shoppers for e in s.events], simulator.catalogue(), source


def real(path: Path) -> tuple[list[EventRecord], list[ItemRecord], str]:
    """S3-Rec Amazon files (a folder with <Domain>.txt; Beauty when present) or a Taobao CSV."""
    if path.is_dir() and (path / "amazon").is_dir():
        path = path / "amazon"
    if path.is_file():
        data = read_taobao(path)
        return data.events, data.items, f"Taobao UserBehavior ({path.name})"
    domains = sorted(p.stem for p in path.glob("*.txt") if not p.stem.endswith("_timestamps"))
    domain = "Beauty" if "Beauty" in domains else domains[0]
    d = read_s3rec(path, domain)
    return list(s3rec_events(d)), s3rec_items(d), f"Amazon {domain} reviews"


# -- views --------------------------------------------------------------------------------------
def history(
    features: features_pb2_grpc.FeatureServiceStub, user: str, limit: int = 1000
) -> Sequence[features_pb2.HistoryEvent]:
    return features.GetUserHistory(features_pb2.GetUserHistoryRequest(user_id=user, limit=limit), timeout=5).events


def show(
    stack_channels: tuple[features_pb2_grpc.FeatureServiceStub, inference_pb2_grpc.InferenceServiceStub],
    user: str, categories: dict[str, str],
) -> inference_pb2.GetInterestProfileResponse:
    features, inference = stack_channels
    events = history(features, user)
    counts = Counter(h.category or "?" for h in events)
    last = ", ".join(h.category or "?" for h in events[-RECENT_WINDOW:])
    say(f"    history    {len(events)} events — " + ", ".join(f"{c} {n}" for c, n in counts.most_common(4)))
    say(f"    last {RECENT_WINDOW}     {last}")
    recs = inference.Recommend(inference_pb2.RecommendRequest(user_id=user, k=5), timeout=5)
    shown = ", ".join(f"{i.item_id} ({categories.get(i.item_id, '?')})" for i in recs.items)
    say(f"    recommend  {shown}")
    profile = inference.GetInterestProfile(
        inference_pb2.GetInterestProfileRequest(user_id=user, recent_window=RECENT_WINDOW), timeout=5)
    top = lambda xs: ", ".join(f"{c.category} {c.weight:.2f}" for c in xs[:3])
    say(f"    long-term  {top(profile.long_term)}")
    say(f"    recent     {top(profile.recent)}")
    say(f"    drift      {profile.drift_score:.2f}   model shift {profile.model_shift:.2f}"
        + (f"   rising: {top(profile.rising)}" if profile.rising else ""))
    say(f"    predicted  shift probability {profile.shift_probability:.2f}   next: {top(profile.next_categories)}")
    return profile


def timeline(features: features_pb2_grpc.FeatureServiceStub, f: Featured) -> ShopperTimeline:
    events = history(features, f.user_id)
    return ShopperTimeline(
        f.user_id,
        [timestamp_us(h.event.occurred_at) for h in events],
        [h.category for h in events],
        [h.event.type for h in events],
        [h.event.item_id for h in events],
        f.planted_at_us,
        f"planted shift into {f.new_category}" if f.new_category else "control: no shift planted",
    )


# -- the run ------------------------------------------------------------------------------------
def run_demo(data: str | None, out: Path, seed: int = 7) -> int:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    url, models = f"sqlite:///{out / 'store.db'}", out / "models"
    started = time.monotonic()
    say("ShiftRec demo — ingestion, features and inference on SQLite and the CPU, on loopback.\n")
    with running_stack(url, models, log_dir=out) as stack:
        say(f"1. Services up: ingestion {stack.ingestion.target}, features {stack.features.target}, "
            f"inference {stack.inference.target} (waiting for a model). Logs in {out}/*.log")
        if data is None:
            events, catalogue, source = simulated(seed)
        else:
            events, catalogue, source = real(Path(data))
        report = import_records(stack.ingestion.target, events, catalogue, progress=False)
        say(f"2. Streamed {source} through IngestEvents: {report.accepted:,} events accepted, "
            f"{report.duplicates} duplicates, {report.rejected} rejected; {report.items_upserted:,} items.")
        config = out / "model.json"
        config.write_text(json.dumps(SIM_MODEL if data is None else REAL_MODEL))
        say("3. Training from the event store and publishing a model package:")
        run_cli("train", "--database-url", url, "--out", str(models), "--config", str(config),
                "--device", "cpu", echo=True)
        stack.inference.wait_serving(timeout=120)
        say("4. The inference service loaded the package and reports SERVING.\n")
        featured = pick_shoppers(events, catalogue)
        categories = {i.item_id: i.category for i in catalogue}
        with open_channel(stack.features.target) as fch, open_channel(stack.inference.target) as ich:
            stubs = (features_pb2_grpc.FeatureServiceStub(fch), inference_pb2_grpc.InferenceServiceStub(ich))
            say("5. Before — what each shopper did and what ShiftRec recommends:")
            for f in featured:
                say(f"  {f.user_id}")
                show(stubs, f.user_id, categories)
            bursts = plant(featured, catalogue, events)
            say(f"\n6. Interests move: {BURST} new events in a category new to each shopper arrive one at a "
                "time through IngestEvents (the control shopper gets none); after each, GetInterestProfile. "
                "No retraining.")
            traces = {f.user_id: [trace_point(stubs[1], f.user_id)] for f in featured}
            for k in range(BURST):
                import_records(stack.ingestion.target, [b[k] for b in bursts.values()], progress=False)
                for f in featured:
                    traces[f.user_id].append(trace_point(stubs[1], f.user_id))
            for f in featured:
                say(f"  {f.user_id:<18} shift probability " + " ".join(f"{p.shift:.2f}" for p in traces[f.user_id])
                    + "   next: " + " ".join(p.next_category or "-" for p in traces[f.user_id][:5]) + " …")
            say("\n7. After:")
            for f in featured:
                say(f"  {f.user_id}" + (f"  (planted: now into {f.new_category})" if f.new_category else "  (control)"))
                show(stubs, f.user_id, categories)
            timelines = [timeline(stubs[0], f) for f in featured]
    runtime = ModelRuntime(pkg.resolve_package(models), device="cpu")  # one session for every line
    for t, f in zip(timelines, featured, strict=True):
        t.shift_probability, t.new_category_probability = model_lines(runtime, t, f.new_category)
    chart = draw(timelines, RECENT_WINDOW, out / "interest_shift.png")
    say("\n8. When was each planted shift flagged? ShiftRec: the predicted next category is the new one "
        f"(next_categories); the drift score: drift ≥ {DETECT_DRIFT} with the new category rising first")
    detected_all = True
    for f in featured:
        trace = traces[f.user_id]
        new = f.new_category
        # how many burst events it took (trace[0] is before the burst), or None
        by_model = next((k for k, p in enumerate(trace) if k and p.next_category == new), None)
        by_drift = next((k for k, p in enumerate(trace) if k and p.drift >= DETECT_DRIFT and p.rising == new), None)
        if f.new_category is None:
            flagged = any(p.next_category != trace[0].next_category for p in trace)
            verdict = "correctly not flagged" if not flagged else "FLAGGED (false alarm)"
            say(f"  {f.user_id}: next category {trace[0].next_category} throughout, shift probability "
                f"{trace[0].shift:.2f}, drift {trace[0].drift:.2f}: {verdict}")
        else:
            flagged = by_model is not None
            say(f"  {f.user_id}: into {f.new_category} — ShiftRec after {_events(by_model)}, "
                f"drift score after {_events(by_drift)}; shift probability {trace[0].shift:.2f} before, "
                f"{max(p.shift for p in trace[1:]):.2f} at most during the burst")
        detected_all &= flagged == (f.new_category is not None)
    say(f"\nChart of these shoppers' interest over time: {chart}")
    say(f"All services stopped. Took {time.monotonic() - started:.0f} s.")
    return 0 if detected_all else 1


def pick_shoppers(events: list[EventRecord], catalogue: list[ItemRecord]) -> list[Featured]:
    """Three shoppers with long, focused histories to move, and one more as the control."""
    category = {i.item_id: i.category for i in catalogue}
    per_user: dict[str, list[str]] = {}
    for e in events:
        per_user.setdefault(e.user_id, []).append(category.get(e.item_id, ""))

    def focus(cats: list[str]) -> float:
        return Counter(cats).most_common(1)[0][1] / len(cats)

    ranked = sorted((u for u, cats in per_user.items() if len(cats) >= 12),
                    key=lambda u: (-focus(per_user[u]), u))
    all_categories = sorted({c for c in category.values() if c})
    featured: list[Featured] = []
    for user in ranked[:3]:
        unseen = [c for c in all_categories if c not in set(per_user[user])]
        featured.append(Featured(user, unseen[len(featured) % len(unseen)]))
    featured.append(Featured(ranked[3], None))
    return featured


def plant(featured: list[Featured], catalogue: list[ItemRecord], events: list[EventRecord]) -> dict[str, list[EventRecord]]:
    """A burst from now in each featured shopper's new category that looks like the data: its most
    common behaviour type (reviews, for Amazon) on that category's most popular items."""
    now = time.time_ns() // 1_000 - 5 * MINUTE_US
    kind = Counter(e.event_type for e in events).most_common(1)[0][0]
    popularity = Counter(e.item_id for e in events)
    by_category: dict[str, list[str]] = {}
    for item in sorted(catalogue, key=lambda i: -popularity[i.item_id]):
        by_category.setdefault(item.category, []).append(item.item_id)
    bursts = {}
    for f in featured:
        if f.new_category is None:
            continue
        f.planted_at_us = now
        items = by_category[f.new_category]
        bursts[f.user_id] = [EventRecord(f"demo-shift:{f.user_id}:{k}", f.user_id, items[k % len(items)],
                                         kind, now + k * MINUTE_US // 2, "demo-store") for k in range(BURST)]
    return bursts


@dataclass
class TracePoint:
    """What GetInterestProfile said at one moment."""

    shift: float
    next_category: str
    drift: float
    rising: str


def trace_point(inference: inference_pb2_grpc.InferenceServiceStub, user: str) -> TracePoint:
    profile = inference.GetInterestProfile(
        inference_pb2.GetInterestProfileRequest(user_id=user, recent_window=RECENT_WINDOW), timeout=5)
    return TracePoint(profile.shift_probability,
                      profile.next_categories[0].category if profile.next_categories else "",
                      profile.drift_score, profile.rising[0].category if profile.rising else "")


def _events(k: int | None) -> str:
    return "never" if k is None else f"{k} event{'s' if k > 1 else ''}"


def model_lines(runtime: ModelRuntime, t: ShopperTimeline, new_category: str | None) -> tuple[list[float], list[float]]:
    """The served package's shift probability after each event of the shopper's history, and
    its probability that the next event is in the planted category (empty for the control)."""
    steps = [Step(i, e, at) for i, e, at in zip(t.item_ids, t.event_types, t.times_us, strict=True)]
    feeds = runtime.encode([steps[: n + 1] for n in range(len(steps))])
    predicted = runtime.run_shift(feeds)
    if predicted is None:
        return [], []
    shift, categories = predicted
    column = runtime.categories.index(new_category) if new_category in runtime.categories else None
    planted = [] if column is None else [float(p) for p in categories[:, column]]
    return [float(p) for p in shift], planted
