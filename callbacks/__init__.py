"""Cross-cutting training work: EMA weights, sample grids, atomic checkpoints, evaluation."""
