"""`shiftrec train` and `shiftrec evaluate`. Torch is imported only inside the handlers, so the
serving CLI starts without it."""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.data import SequenceData

DEFAULT_DATASETS = "../shared/datasets"


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="train the sequential model and publish a package")
    _data_args(train)
    train.add_argument("--out", metavar="MODEL_DIR", help="publish the package here (omit: no export)")
    train.add_argument("--epochs", type=int, help="maximum epochs (default: the config's, early stopping)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--config", metavar="JSON", help="JSON file overriding model/training config fields")
    train.add_argument("--version", help="package version name (default: UTC time + data fingerprint)")
    train.add_argument("--init-from", "--finetune-from", dest="init_from", metavar="PATH",
                       help="fine-tune: start from this package's weights (a model dir uses its LATEST), "
                            "which becomes the new package's parent version; a model dir with nothing "
                            "published yet means training from scratch (the first scheduled run)")
    train.add_argument("--pretrain", action="store_true",
                       help="train a source-domain model for cross-domain transfer (item text inputs on); "
                            "a later `--init-from` this package on another domain carries over the sequence "
                            "encoder and text projection, not the domain's item ids or tags")
    train.add_argument("--new-events-only", action="store_true",
                       help="with --init-from a same-domain model: learn only from targets newer than the "
                            "parent's data (older events stay as context); default: all training events")
    train.add_argument("--retrieval", choices=("auto", "on", "off"), default="auto",
                       help="give the package the approximate top-k path (faiss index + small graphs): "
                            "auto = for catalogues of 100,000 items or more")
    train.add_argument("--report-json", metavar="PATH", help="also write the run's report as JSON")
    train.set_defaults(func=cmd_train)

    evaluate = subparsers.add_parser(
        "evaluate", help="evaluate a published package on a dataset, or run the full quality report")
    _data_args(evaluate)
    evaluate.add_argument("--package", metavar="PATH", help="model dir (uses LATEST) or package dir")
    evaluate.add_argument("--report", action="store_true",
                          help="the full quality report: seeds x (model, ablation) + baselines")
    evaluate.add_argument("--datasets", default=DEFAULT_DATASETS,
                          help="datasets folder for --report (amazon/<domain>.txt inside)")
    evaluate.add_argument("--domains", default="Beauty,Sports_and_Outdoors", help="for --report")
    evaluate.add_argument("--seeds", type=int, default=3, help="for --report")
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    evaluate.add_argument("--config", metavar="JSON", help="for --report: config overrides")
    evaluate.add_argument("--epochs", type=int, help="for --report: maximum epochs")
    evaluate.add_argument("--out", metavar="DIR", default="var/reports", help="for --report: output folder")
    evaluate.set_defaults(func=cmd_evaluate)


def _data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="SPEC",
                        help=f"s3rec:DIR/Beauty or taobao:FILE.csv (e.g. s3rec:{DEFAULT_DATASETS}/amazon/Beauty)")
    parser.add_argument("--database-url", help="train from the event store instead of files")
    parser.add_argument("--holdout", choices=("auto", "test", "serving"), default="auto",
                        help="test: last event = test, second-to-last = validation (literature); "
                             "serving: last event = validation, nothing else held out. "
                             "auto: serving for --database-url, test for --data")


def _load(args: argparse.Namespace) -> "SequenceData":
    from training.data import HOLDOUT_SERVING, HOLDOUT_TEST, load_files, load_store

    if not args.data and not args.database_url:
        # the store named by SHIFTREC_DATABASE_URL (keeps passwords out of process arguments)
        from shared.settings import Settings

        if "SHIFTREC_DATABASE_URL" in os.environ:
            args.database_url = Settings().database_url
    if bool(args.data) == bool(args.database_url):
        raise SystemExit("give exactly one of --data and --database-url (or set SHIFTREC_DATABASE_URL)")
    if args.database_url:
        holdout = HOLDOUT_TEST if args.holdout == "test" else HOLDOUT_SERVING
        return load_store(args.database_url, holdout=holdout)
    holdout = HOLDOUT_SERVING if args.holdout == "serving" else HOLDOUT_TEST
    return load_files(args.data, holdout=holdout)


def cmd_train(args: argparse.Namespace) -> int:
    from shared import model_package as pkg
    from training.evaluation import format_metrics
    from training.train import RunOptions, load_overrides, main

    data = _load(args)
    print(f"data: {len(data.users)} users, {data.n_items} items, {data.n_tags} tags "
          f"({data.source}, holdout={data.holdout})", file=sys.stderr)
    init_from = args.init_from
    if init_from and not (Path(init_from) / pkg.MANIFEST_FILE).exists() and pkg.latest_version(init_from) is None:
        print(f"--init-from {init_from}: nothing published there yet; training from scratch", file=sys.stderr)
        init_from = None
    report = main(data=data, out=args.out,
        run=RunOptions(overrides=load_overrides(args.config), epochs=args.epochs, device=args.device,
            seed=args.seed, version=args.version, finetune_from=init_from, pretrain=args.pretrain,
            new_events_only=args.new_events_only,
            retrieval={"auto": None, "on": True, "off": False}[args.retrieval]))
    print(f"{report['split']} metrics (best epoch {report['best_epoch']} of {report['epochs_run']}, "
          f"{report['train_seconds']:.0f} s, {report['seconds_per_epoch']:.1f} s/epoch):")
    print(format_metrics(report["metrics"]))
    served, fit = report["migration"]["served"], report["migration_fit"]
    print(f"interest migration ({report['split']}; moved = next category not among the last "
          f"{report['config']['model']['shift_window']} events'): {served['moved_share']:.1%} moved, "
          f"P(move) AUC {served['AUC_move']:.3f} ECE {served['ECE_move']:.3f}, destinations top-3 "
          f"{served.get('dest_top3', float('nan')):.3f}, NDCG@10 moved {served['NDCG@10_moved']:.4f} "
          f"stayed {served['NDCG@10_stayed']:.4f} (beta {fit['beta']})")
    if "package" in report:
        print(f"published {report['package']}")
    if args.report_json:
        Path(args.report_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report_json).write_text(json.dumps(report, indent=1))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.report:
        from training.experiments import report

        # the same run as `python -m training.experiments.report` (which also takes --jobs, --threads,
        # --ablation-seeds, --table-only, --fresh)
        argv = ["--datasets", args.datasets, "--domains", args.domains, "--seeds", str(args.seeds),
                "--device", args.device, "--out", args.out]
        argv += ["--config", args.config] if args.config else []
        argv += ["--epochs", str(args.epochs)] if args.epochs is not None else []
        return report.main(argv)
    if not args.package:
        raise SystemExit("give --package MODEL_DIR (or --report)")
    from training.evaluation import evaluate_package, format_metrics

    metrics = evaluate_package(args.package, _load(args))
    print(format_metrics(metrics))
    return 0
