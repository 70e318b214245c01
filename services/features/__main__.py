"""python -m services.features: the same as `shiftrec serve features`."""

from shared.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve", "features"]))
