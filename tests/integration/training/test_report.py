"""The quality report (`make report-train`) and the training benchmark (`make bench-train`) on
a tiny generated domain: every row of the table is produced, the ablation really switches the
inputs off, an interrupted report resumes without repeating a finished run (nor reusing one trained with
another config), and the benchmark stops at its target or its time budget."""

import json

import pytest

pytest.importorskip("torch")

from training import baselines, step_prior
from training.data import load_files
from training.experiments import report
from training.model import ModelConfig

from .conftest import TINY, write_domain


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-data")
    write_domain(root / "amazon", "Tiny", seed=7, asin_prefix="B", titles=("red lipstick", "hiking boots"))
    return root


def _args(datasets, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY, "epochs": 2}))
    return ["--datasets", str(datasets), "--domains", "Tiny", "--seeds", "2", "--config", str(config),
            "--jobs", "2", "--device", "cpu", "--out", str(tmp_path / "out")]


def test_the_report_has_every_row_and_resumes(datasets, tmp_path, capsys):
    args = _args(datasets, tmp_path)
    assert report.main(args) == 0
    out = capsys.readouterr()
    assert out.err.count("[report] start") == 5  # baselines + 2 seeds x (model, ablation)

    results = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = results["domains"]["Tiny"]
    expected = set(baselines.all_baselines(load_files(f"s3rec:{datasets / 'amazon' / 'Tiny'}"))) | {"model", "ablation"}
    assert set(rows) == expected
    assert [r["seed"] for r in rows["model"]] == [0, 1] and [r["seed"] for r in rows["ablation"]] == [0, 1]
    for run in rows["model"]:
        assert run["config"]["model"]["use_tags"] and run["config"]["model"]["use_time"]
        assert run["config"]["model"]["dim"] == TINY["dim"] and run["epochs_run"] == 2
        assert run["step_prior"]["weight"] in step_prior.WEIGHTS  # what was fitted, kept with the run
    for run in rows["ablation"]:
        cfg = run["config"]["model"]
        assert not (cfg["use_tags"] or cfg["use_types"] or cfg["use_time"])
    kept = json.loads((tmp_path / "out" / "runs" / "Tiny-model-1.json").read_text())
    assert rows["model"][1]["metrics"] == kept["metrics"]
    table = (tmp_path / "out" / "report.md").read_text()
    for name in expected:
        assert f"| {name} |" in table

    # interrupted: one run lost; the rerun trains only that one and the table is whole again
    runs = sorted((tmp_path / "out" / "runs").glob("*.json"))
    (tmp_path / "out" / "runs" / "Tiny-ablation-1.json").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in runs if p.exists()}
    assert report.main(args) == 0
    err = capsys.readouterr().err
    assert err.count("[report] start") == 1 and "start Tiny-ablation-1" in err
    assert {p.name: p.stat().st_mtime_ns for p in runs if p.name in stamps} == stamps
    again = json.loads((tmp_path / "out" / "report.json").read_text())["domains"]["Tiny"]
    assert [r["seed"] for r in again["ablation"]] == [0, 1]

    # --table-only trains nothing and reprints the same table
    assert report.main([*args, "--table-only"]) == 0
    out = capsys.readouterr()
    assert "[report] start" not in out.err and (tmp_path / "out" / "report.md").read_text() in out.out

    # a kept run trained with another config (as when a default changes after it ran) is not
    # reused: the table leaves it out and the next report trains it again
    path = tmp_path / "out" / "runs" / "Tiny-model-0.json"
    tampered = json.loads(path.read_text())
    tampered["config"]["model"]["graph_text_k"] += 5
    path.write_text(json.dumps(tampered))
    assert report.main([*args, "--table-only"]) == 0
    out = capsys.readouterr()
    assert "kept Tiny-model-0 is out of date (model.graph_text_k" in out.err and "[report] start" not in out.err
    assert [r["seed"] for r in json.loads((tmp_path / "out" / "report.json").read_text())
            ["domains"]["Tiny"]["model"]] == [1]
    assert report.main(args) == 0
    err = capsys.readouterr().err
    assert err.count("[report] start") == 1 and "start Tiny-model-0" in err
    assert json.loads(path.read_text())["config"]["model"]["graph_text_k"] == tampered["config"]["model"]["graph_text_k"] - 5

    # the identity is the config trained, not the overrides that reached it: naming a default's
    # own value, or another per-run time budget, repeats nothing
    same = tmp_path / "same.json"
    same.write_text(json.dumps({**TINY, "epochs": 2, "graph_text_k": ModelConfig().graph_text_k}))
    assert report.main([*args, "--config", str(same), "--max-minutes", "30"]) == 0
    assert "[report] start" not in capsys.readouterr().err


def test_the_training_benchmark_stops_at_its_target(datasets, tmp_path, capsys):
    from training.experiments import bench

    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    base = ["--datasets", str(datasets), "--domain", "Tiny", "--config", str(config), "--device", "cpu"]
    assert bench.main([*base, "--target", "0", "--out", str(tmp_path / "reached.json")]) == 0
    reached = json.loads((tmp_path / "reached.json").read_text())
    assert reached["epochs_to_target"] == reached["epochs"] == 1  # any NDCG reaches 0: stops after epoch 1
    assert reached["seconds_to_target"] == pytest.approx(reached["history"][0]["elapsed_seconds"])
    assert reached["peak_rss_mib"] > 0 and reached["peak_gpu_mib"] is None
    assert "seconds_per_epoch_mean" in capsys.readouterr().out

    # an unreachable target: the run stops on its time budget and says the target was not reached
    assert bench.main([*base, "--target", "1.01", "--max-minutes", "0",
                       "--out", str(tmp_path / "missed.json")]) == 0
    missed = json.loads((tmp_path / "missed.json").read_text())
    assert missed["seconds_to_target"] is None and missed["epochs_to_target"] is None
    assert missed["epochs"] == 1 and missed["best_valid_ndcg10"] <= 1


def test_the_plan_runs_fewer_ablation_seeds_when_asked():
    tasks = report.plan("data", ["A", "B"], 3, ("model", "ablation"), {"max_minutes": 5}, threads=1,
                        ablation_seeds=1)
    names = [t["name"] for t in tasks]
    assert len(names) == len(set(names))
    for domain in ("A", "B"):
        assert [n for n in names if n.startswith(f"{domain}-")] == [
            f"{domain}-baselines", f"{domain}-model-0", f"{domain}-ablation-0", f"{domain}-model-1", f"{domain}-model-2"]
    ablation = next(t for t in tasks if t["name"] == "A-ablation-0")
    assert ablation["overrides"] == {"max_minutes": 5, **report.ABLATION, "threads": 1}
    assert ablation["spec"].endswith("amazon/A") and ablation["spec"].startswith("s3rec:")


def test_the_plan_adds_chosen_seeds_to_a_kept_report():
    assert report.seed_list("3") == [0, 1, 2]
    assert report.seed_list("1-2") == report.seed_list("1,2") == [1, 2]
    assert report.seed_list("2,") == [2]
    tasks = report.plan("data", ["A"], report.seed_list("1-2"), ("model", "ablation"), {}, threads=1,
                        ablation_seeds=1, baselines=False)
    assert [(t["name"], t["seed"]) for t in tasks] == [("A-model-1", 1), ("A-ablation-1", 1), ("A-model-2", 2)]


@pytest.mark.parametrize("text", ["", "x", "0", "-1", "1,1", "2-1", "1-x"])
def test_a_bad_seed_list_is_refused(text):
    with pytest.raises(SystemExit) as refused:
        report.main(["--seeds", text, "--table-only", "--no-baselines"])
    assert refused.value.code == 2  # argparse's usage error, before anything is read or written


def test_shiftrec_evaluate_report_is_the_same_run(monkeypatch, tmp_path):
    from app import cli

    seen = []
    monkeypatch.setattr(report, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["evaluate", "--report", "--datasets", "D", "--domains", "Beauty", "--seeds", "2",
                     "--epochs", "3", "--out", str(tmp_path)]) == 0
    argv = seen[0]
    flags = dict(zip(argv[::2], argv[1::2]))
    assert flags == {"--datasets": "D", "--domains": "Beauty", "--seeds": "2", "--device": "auto",
                     "--out": str(tmp_path), "--epochs": "3"}
