"""The composition root: the `shiftrec` command line, the importer client, local process tooling,
the storefront simulator and the demo. It may import every package; only tests import it."""
