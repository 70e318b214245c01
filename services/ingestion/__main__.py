"""python -m services.ingestion: the same as `shiftrec serve ingestion`."""

from shared.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve", "ingestion"]))
