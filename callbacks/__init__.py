"""Cross-cutting training work: EMA weights, sample grids, evaluation, the loss guard, random states."""
