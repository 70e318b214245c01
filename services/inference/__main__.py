"""python -m services.inference: the same as `shiftrec serve inference`."""

from shared.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve", "inference"]))
