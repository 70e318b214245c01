"""`shiftrec`: the one command-line entry point (serve, import, db, train, evaluate)."""

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from shared.clients import ClientConfig
from shared.grpc_server import Server, serve
from shared.settings import Settings

if TYPE_CHECKING:
    from app.importer import ImportReport

DEFAULT_DATASETS = "../shared/datasets"
SERVICES = ("ingestion", "features", "inference")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    return Settings(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    build_server: Callable[[Settings, int | None], Server]
    if args.service == "ingestion":
        from services.ingestion.server import build_server
    elif args.service == "features":
        from services.features.server import build_server
    else:
        from services.inference.server import build_server
    serve(build_server, _settings(args), args.port)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from shared.store import create_store_engine, upgrade_schema
    from shared.store.db import current_revision

    engine = create_store_engine(_settings(args).database_url)
    upgrade_schema(engine, args.revision)
    print(f"schema at revision {current_revision(engine)}")
    return 0


def _print_report(report: "ImportReport") -> int:
    print(
        f"items upserted: {report.items_upserted}  events accepted: {report.accepted}  "
        f"duplicates: {report.duplicates}  rejected: {report.rejected}"
    )
    for reason, count in report.reasons.most_common(10):
        print(f"  rejected {count}x: {reason}")
    return 0


def cmd_import_s3rec(args: argparse.Namespace) -> int:
    from app.importer import import_records
    from shared.datasets import read_s3rec, s3rec_events, s3rec_items

    domain = read_s3rec(args.data_dir, args.domain, timestamps=not args.no_timestamps)
    total = sum(max(len(s) - args.holdout_last, 0) for s in domain.sequences.values())
    report = import_records(
        args.target,
        s3rec_events(domain, args.holdout_last),
        s3rec_items(domain, categories=args.categories),
        batch_size=args.batch_size,
        total=total,
        progress=not args.quiet,
        client=ClientConfig.from_settings(Settings()),
    )
    return _print_report(report)


def cmd_import_taobao(args: argparse.Namespace) -> int:
    from app.importer import import_records
    from shared.datasets import read_taobao

    data = read_taobao(args.path, args.holdout_last)
    report = import_records(
        args.target,
        data.events,
        data.items,
        batch_size=args.batch_size,
        total=len(data.events),
        progress=not args.quiet,
        client=ClientConfig.from_settings(Settings()),
    )
    return _print_report(report)


def cmd_import_synthetic(args: argparse.Namespace) -> int:
    from app.importer import import_records
    from app.scale import ScaleStorefront

    store = ScaleStorefront(items_n=args.items, events_n=args.events, categories_n=args.categories,
                            shoppers_n=args.shoppers, seed=args.seed)
    report = import_records(
        args.target,
        store.events(),
        store.items(),
        batch_size=args.batch_size,
        total=args.events,
        progress=not args.quiet,
        client=ClientConfig.from_settings(Settings()),
    )
    return _print_report(report)


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from app.demo.run import run_demo

    return run_demo(args.data, Path(args.out), seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shiftrec",
        description="ShiftRec: ingest shopper behaviour, train a drift-aware sequential "
        "recommender, serve it over gRPC. Settings also come from SHIFTREC_* variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run one of the gRPC services until SIGTERM")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--port", type=int, help="listen port (defaults 50051/50052/50053)")
    serve.add_argument("--database-url", help="SQLAlchemy URL (SHIFTREC_DATABASE_URL)")
    serve.set_defaults(func=cmd_serve)

    db = commands.add_parser("db", help="database schema management").add_subparsers(
        dest="db_command", required=True, metavar="DB_COMMAND"
    )
    upgrade = db.add_parser("upgrade", help="apply Alembic migrations")
    upgrade.add_argument("--database-url", help="SQLAlchemy URL (SHIFTREC_DATABASE_URL)")
    upgrade.add_argument("--revision", default="head", help="target revision (default head)")
    upgrade.set_defaults(func=cmd_db_upgrade)

    imp = commands.add_parser(
        "import", help="send a dataset through IngestionService"
    ).add_subparsers(dest="source", required=True, metavar="SOURCE")

    def common(p: argparse.ArgumentParser, holdout: bool = True) -> None:
        p.add_argument("--target", default="127.0.0.1:50051", help="ingestion host:port")
        if holdout:
            p.add_argument("--holdout-last", type=int, default=0, metavar="N",
                           help="leave out each user's last N interactions (evaluation protocol)")
        p.add_argument("--batch-size", type=int, default=500)
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    s3rec = imp.add_parser("s3rec", help="Amazon reviews in the S3-Rec format (Beauty, Sports...)")
    s3rec.add_argument("--data-dir", default=f"{DEFAULT_DATASETS}/amazon")
    s3rec.add_argument("--domain", default="Beauty", help="file prefix, e.g. Sports_and_Outdoors")
    s3rec.add_argument("--no-timestamps", action="store_true",
                       help="ignore <domain>_timestamps.txt; use synthetic increasing times")
    s3rec.add_argument("--categories", choices=("coarse", "fine"), default="coarse",
                       help="item category stored: coarse (top-level, 7 in Beauty) or fine (one attribute "
                            "below the root, 42 in Beauty); the shift head predicts moves between these")
    common(s3rec)
    s3rec.set_defaults(func=cmd_import_s3rec)

    taobao = imp.add_parser("taobao", help="Taobao UserBehavior CSV")
    taobao.add_argument("--path", default=f"{DEFAULT_DATASETS}/taobao/UserBehavior_head.csv")
    common(taobao)
    taobao.set_defaults(func=cmd_import_taobao)

    synthetic = imp.add_parser("synthetic", help="a generated storefront at any scale (app/scale.py): "
                               "Zipf-popular items and categories, shoppers drifting between categories")
    synthetic.add_argument("--items", type=int, default=100_000)
    synthetic.add_argument("--events", type=int, default=1_000_000)
    synthetic.add_argument("--categories", type=int, default=200)
    synthetic.add_argument("--shoppers", type=int, default=0, help="default: events / 20")
    synthetic.add_argument("--seed", type=int, default=0)
    common(synthetic, holdout=False)
    synthetic.set_defaults(func=cmd_import_synthetic)

    demo = commands.add_parser(
        "demo", help="the whole pipeline end to end on embedded defaults (what `make demo` runs)"
    )
    demo.add_argument("--data", help="real data instead of the simulator: an S3-Rec Amazon folder "
                      "(e.g. ../shared/datasets/amazon) or a Taobao UserBehavior CSV")
    demo.add_argument("--out", default="var/demo", help="where the store, models, logs and chart go")
    demo.add_argument("--seed", type=int, default=7, help="simulator seed")
    demo.set_defaults(func=cmd_demo)

    _register_training(commands)
    return parser


def _register_training(commands: argparse._SubParsersAction) -> None:
    """`train` and `evaluate` come from the training package (torch loads only when they run)."""
    try:
        from app.training_cli import register
    except ImportError:
        return
    register(commands)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.func
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
