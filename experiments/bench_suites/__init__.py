"""The suites of ``python -m experiments.bench``, one file each; ``experiments/bench.py`` runs them."""
