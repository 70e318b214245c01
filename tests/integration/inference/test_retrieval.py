"""A retrieval package (the large-catalogue path: faiss index + small graphs) served end to end:
with every item a candidate it gives exactly the whole-catalogue answer; with fewer candidates
its filters stay exact in effect (never an excluded or seen item, k items whenever k exist, a
category's items in the exact order); a bad index is refused, a good one swaps in under load; batched
calls equal calls alone."""

import json
import shutil
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

pytest.importorskip("torch")

from services.inference.ranking import Inference
from services.inference.registry import ModelRegistry
from services.inference.runtime import ModelRuntime, PackageError, Step
from shared import model_package as pkg
from training import retrieval, step_prior
from training.data import load_store
from training.train import RunOptions, main

from .conftest import TINY_MODEL, Pipeline


class Fixed:
    """A registry stand-in that always serves one runtime."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime

    def current(self) -> ModelRuntime:
        return self.runtime


def publish(pipeline: Pipeline, out: Path, candidates: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(retrieval, "CANDIDATES", candidates)
    report = main(data=load_store(pipeline.database_url), out=str(out), run=RunOptions(
        overrides=TINY_MODEL, epochs=1, device="cpu", progress=False, version=f"r{candidates}", retrieval=True))
    return Path(report["package"])


STRONG_STEPS = 20.0  # a step-prior weight that puts the items it lifts above the rest


@pytest.fixture(scope="module")
def packages(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Retrieval packages of the same data: every item a candidate; 16 candidates; 16 candidates
    with a step prior strong enough to decide each top 10."""
    out = tmp_path_factory.mktemp("retrieval")
    with pytest.MonkeyPatch.context() as mp:
        made = {"all": publish(pipeline, out / "all", 100_000, mp), "few": publish(pipeline, out / "few", 16, mp)}
        mp.setattr(step_prior, "WEIGHTS", (STRONG_STEPS,))  # the only weight the fit may choose
        made["steps"] = publish(pipeline, out / "steps", 16, mp)
    return made


def histories(pipeline: Pipeline, runtime: ModelRuntime, n: int = 40) -> list[list[Step]]:
    """Histories of known items, as the features service would hand them over."""
    rng = np.random.default_rng(0)
    vocab = runtime.item_vocab
    out = []
    for length in rng.integers(1, 25, n):
        out.append([Step(vocab[int(j)], 1 + int(j) % 4, 1_400_000_000 + 60 * t)
                    for t, j in enumerate(rng.integers(0, len(vocab), length))])
    return out


def exact(package: Path) -> Inference:
    runtime = ModelRuntime(package, device="cpu")
    runtime.retrieval = None  # the whole-catalogue path of the same package
    return Inference(Fixed(runtime))


def test_the_package_carries_the_retrieval_path_and_its_recall(packages):
    for package in packages.values():
        manifest = pkg.load_manifest(package)
        for name in (pkg.INDEX_FILE, pkg.ENCODER_FILE, pkg.RANK_FILE):
            assert (package / name).stat().st_size > 0
        r = manifest.retrieval
        assert r["nprobe"] >= 1 and r["recall_users"] > 0 and 0.0 <= r["recall_at_10"] <= 1.0
        assert max(r["parity"].values()) <= 1e-4
    # fewer candidates than items: the category shares are estimated with a per-category sample
    assert pkg.load_manifest(packages["few"]).retrieval["mass_sample"] > 0
    # with every item a candidate and every list probed the path is the exact one
    full = pkg.load_manifest(packages["all"]).retrieval
    assert full["mass_sample"] == 0
    assert full["candidates"] == len(pkg.load_manifest(packages["all"]).item_vocab)
    assert pytest.approx(full["recall_at_10"]) == 1.0 or full["nprobe"] < full["nlist"]


def test_every_item_a_candidate_gives_the_exact_answer(pipeline, packages):
    runtime = ModelRuntime(packages["all"], device="cpu")
    runtime.retrieval.params.nprobe = runtime.retrieval.index.nlist  # every list: the exact candidate set
    served, whole = Inference(Fixed(runtime)), exact(packages["all"])
    for history in histories(pipeline, runtime):
        a = served.recommend(history, 10, None, [], False)
        b = whole.recommend(history, 10, None, [], False)
        assert [i for i, _ in a.items] == [i for i, _ in b.items]
        np.testing.assert_allclose([s for _, s in a.items], [s for _, s in b.items], atol=1e-4)


def test_filters_stay_exact_in_effect_with_few_candidates(pipeline, packages):
    runtime = ModelRuntime(packages["few"], device="cpu")
    served, whole = Inference(Fixed(runtime)), exact(packages["few"])
    categories = sorted({c for c in runtime.item_categories if c})
    for n, history in enumerate(histories(pipeline, runtime)):
        seen = {s.item_id for s in history}
        exclude = runtime.item_vocab[n : n + 5]
        for k in (1, 10, 15, 40):  # 40 > 16 candidates: the exact path answers
            got = [i for i, _ in served.recommend(history, k, None, exclude, False).items]
            want = [i for i, _ in whole.recommend(history, k, None, exclude, False).items]
            assert len(got) == len(want) == min(k, len(set(runtime.item_vocab) - seen - set(exclude)))
            assert not (set(got) & (seen | set(exclude)))
        category = categories[n % len(categories)]
        got = [i for i, _ in served.recommend(history, 10, category, exclude, False).items]
        want = [i for i, _ in whole.recommend(history, 10, category, exclude, False).items]
        assert got == want  # a category's items in the exact order
        assert served.recommend(history, 10, "no-such-category", [], False).items == []


def test_a_damaged_index_is_refused(packages, tmp_path):
    for damage in ("garbage", "other size", "not IVF"):
        bad = tmp_path / damage.replace(" ", "-")
        shutil.copytree(packages["few"], bad)
        if damage == "garbage":
            (bad / pkg.INDEX_FILE).write_bytes(b"not an index")
        elif damage == "not IVF":  # the right size and width, but no lists to probe
            index = faiss.read_index(str(bad / pkg.INDEX_FILE))
            flat = faiss.IndexFlatIP(index.d)
            flat.add(index.reconstruct_n(0, index.ntotal))
            faiss.write_index(flat, str(bad / pkg.INDEX_FILE))
        else:
            shutil.copy(packages["all"] / pkg.INDEX_FILE, bad / pkg.INDEX_FILE)
            manifest = json.loads((bad / pkg.MANIFEST_FILE).read_text())
            manifest["item_vocab"] = manifest["item_vocab"][:-1]
            manifest["item_categories"] = manifest["item_categories"][:-1]
            (bad / pkg.MANIFEST_FILE).write_text(json.dumps(manifest))
        with pytest.raises(PackageError):
            ModelRuntime(bad, device="cpu")


def test_a_damaged_index_keeps_the_served_model(packages, tmp_path, caplog):
    model_dir = tmp_path / "models"
    good = pkg.load_manifest(packages["few"]).version
    shutil.copytree(packages["few"], model_dir / good)
    (model_dir / pkg.LATEST_FILE).write_text(f"{good}\n")
    registry = ModelRegistry(model_dir, device="cpu")
    assert registry.refresh() and registry.current().version == good
    bad = model_dir / "v-bad"
    shutil.copytree(packages["few"], bad)
    manifest = json.loads((bad / pkg.MANIFEST_FILE).read_text())
    (bad / pkg.MANIFEST_FILE).write_text(json.dumps({**manifest, "version": "v-bad"}))
    (bad / pkg.INDEX_FILE).write_bytes(b"\x00" * 64)
    (model_dir / pkg.LATEST_FILE).write_text("v-bad\n")
    assert not registry.refresh()
    assert registry.current().version == good
    assert any(getattr(r, "version", None) == "v-bad" and "refused" in r.getMessage() for r in caplog.records)


def test_concurrent_calls_batched_equal_calls_alone(pipeline, packages):
    alone = ModelRuntime(packages["few"], device="cpu")
    batched = ModelRuntime(packages["few"], device="cpu", batch_max=8, batch_wait_s=0.005)
    feeds = [alone.encode([h]) for h in histories(pipeline, alone, 24)]
    want = [alone.retrieve(f) for f in feeds]
    got: list = [None] * len(feeds)
    start = threading.Barrier(len(feeds))

    def call(i: int) -> None:
        start.wait()
        got[i] = batched.retrieve(feeds[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batched.close()
    for (gc, gs), (wc, ws) in zip(got, want):
        np.testing.assert_array_equal(gc, wc)
        np.testing.assert_allclose(gs, ws, atol=1e-5)


def test_what_the_step_prior_lifts_is_always_ranked(pipeline, packages):
    """The index proposes by inner product alone, so the items the step prior lifts may lie in
    lists it does not probe; the encoder's step candidates put them among the ranked columns.
    With one list probed and a prior that decides the top 10, the answer follows the exact path
    with them and misses without."""
    manifest = pkg.load_manifest(packages["steps"])
    k_steps = manifest.retrieval["step_candidates"]
    assert k_steps == manifest.config["model"]["step_prior_k"] > 0
    assert manifest.retrieval["parity"]["max_abs_diff_step_candidates"] == 0.0
    runtime = ModelRuntime(packages["steps"], device="cpu")
    path = runtime.retrieval
    path.params.nprobe = 1
    assert path.index.nlist > 1 and path.candidates == 16 + k_steps
    whole = exact(packages["steps"])
    lifted_rows = 0
    recall = {"with": [], "without": []}
    for history in histories(pipeline, runtime, 80):
        feeds = runtime.encode([history])
        steps = path.encode(feeds)[1]
        columns, _ = path.retrieve(feeds)
        lifted = set(steps[0][steps[0] >= 0].tolist())
        real = columns[0][columns[0] >= 0]
        assert lifted <= set(real.tolist()) and len(set(real.tolist())) == len(real)  # all lifted, distinct
        want = [i for i, _ in whole.recommend(history, 10, None, [], True).items]
        got = [i for i, _ in Inference(Fixed(runtime)).recommend(history, 10, None, [], True).items]
        path.steps = 0  # the index's candidates alone (packages before the step candidates)
        alone = [i for i, _ in Inference(Fixed(runtime)).recommend(history, 10, None, [], True).items]
        path.steps = k_steps
        lifted_rows += bool(lifted)
        if lifted:
            recall["with"].append(len(set(got) & set(want)) / len(want))
            recall["without"].append(len(set(alone) & set(want)) / len(want))
    assert lifted_rows >= 40
    assert np.mean(recall["with"]) >= 0.9
    assert np.mean(recall["without"]) < np.mean(recall["with"]) - 0.1


def test_the_small_graphs_run_without_the_padding_every_row_carries(pipeline, packages):
    """encoder.onnx and rank.onnx take a narrower event axis, as model.onnx does: a call is run
    without the leading columns that are padding in every row, and answers as on the whole window."""
    runtime = ModelRuntime(packages["steps"], device="cpu")
    path = runtime.retrieval
    assert path.cuts_padding and path.steps > 0
    short = [h for h in histories(pipeline, runtime) if len(h) < runtime.max_len // 2]
    for batch in ([short[0]], short[:8], [h for h in short if len(h) < 4]):
        feeds = runtime.encode(batch)
        assert not feeds[pkg.INPUT_ITEM_IDS][:, 0].any()  # every row carries padding to cut
        path.cuts_padding = True
        cut = path.retrieve(feeds)
        path.cuts_padding = False
        whole = path.retrieve(feeds)
        np.testing.assert_array_equal(cut[0], whole[0])
        np.testing.assert_allclose(cut[1], whole[1], atol=1e-5)


def test_a_retrieval_package_is_published_and_swapped_in_under_load(pipeline, packages, tmp_path):
    """The atomic publish and the hot reload hold for the large-catalogue path: requests racing
    the swap (several threads, batching on) all succeed, each from one whole package, and after it
    the new package's index answers (every item a candidate there: the exact top 10)."""
    model_dir = tmp_path / "models"

    def publish(name: str) -> str:
        version = pkg.load_manifest(packages[name]).version
        staged = pkg.staging_dir(model_dir, version)
        shutil.copytree(packages[name], staged, dirs_exist_ok=True)
        pkg.publish_package(staged, model_dir, version)
        return version

    old = publish("few")
    registry = ModelRegistry(model_dir, device="cpu", batch_max=8, batch_threads=2)
    assert registry.refresh() and registry.current().retrieval is not None
    served = Inference(registry)
    runtime = registry.current()
    batch = histories(pipeline, runtime, 16)
    answers: list[tuple[str, list[str]]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def shopper(history: list[Step]) -> None:
        while not stop.is_set():
            try:
                result = served.recommend(history, 10, None, [], True)
                answers.append((result.model_version, [i for i, _ in result.items]))
            except BaseException as exc:  # noqa: BLE001 - any failure is the finding
                failures.append(exc)

    def answered(count: int) -> None:
        """Wait until `count` answers are in; a failing call ends the wait (no hang)."""
        deadline = time.monotonic() + 120
        while len(answers) < count and not failures and time.monotonic() < deadline:
            time.sleep(0.01)

    threads = [threading.Thread(target=shopper, args=(h,)) for h in batch[:4]]
    for t in threads:
        t.start()
    try:
        answered(20)
        new = publish("all")
        assert registry.refresh() and registry.current().version == new
        answered(len(answers) + 20)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures
    assert {v for v, _ in answers} == {old, new}
    assert all(len(items) == 10 for _, items in answers)
    whole = exact(packages["all"])
    for history in batch:
        assert [i for i, _ in served.recommend(history, 10, None, [], True).items] == [
            i for i, _ in whole.recommend(history, 10, None, [], True).items]
