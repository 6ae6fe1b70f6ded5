"""Stage 3 of the protocol: set-level figures of the generated sets against the real evaluation split.

Each evaluation seed's sample set gets FD, KID, precision and recall; metrics.json reports their
mean over seeds, the spread over seeds, and a bootstrap interval of that mean (``evaluation.bootstrap``:
``eval.bootstrap.resamples`` replicates; the real set's replicate r is shared by every seed). The
floor is the same figures for real images of the other held-out split, as many as each generated
set, against the same real set: what a perfect generator would score at this n.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import Tensor

from evaluation.bootstrap import (
    FrechetReplicates,
    KIDReplicates,
    PrecisionRecallReplicates,
    draw_weights,
    spread_interval,
    replicate_values,
)
from evaluation.fid import distribution_figures, frechet_distance

DISTRIBUTION_KEYS = ("fid", "kid_mean", "precision", "recall")
RANGES = {"fid": (0.0, None), "kid_mean": (None, None), "precision": (0.0, 1.0), "recall": (0.0, 1.0)}  # clip intervals to these


def bootstrap_weights(sizes: list[int], cfg: Any, stream: int = 0) -> list[Tensor]:
    """(R, n) multiplicities per set; set i of ``stream`` draws with seed ``eval.bootstrap.seed + 1000 * stream + i``."""
    settings = cfg["bootstrap"]
    first = int(settings["seed"]) + 1000 * stream
    return [draw_weights(size, int(settings["resamples"]), first + i) for i, size in enumerate(sizes)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def distribution_scores(real: Tensor, fakes: list[Tensor], seeds: list[int], weights: list[Tensor], cfg: Any) -> dict[str, Any]:
    """Mean over sets of FD, KID (mean, std over subsets), precision, recall; intervals; per-set values.

    ``seeds`` seed each set's KID subsets; ``weights[0]`` are the real set's replicates, ``weights[1 + i]``
    those of ``fakes[i]``.
    """
    per_set = [
        distribution_figures(real, fake, int(cfg["kid_subsets"]), int(cfg["kid_subset_size"]), int(cfg["pr_neighborhood"]), int(seed))
        for fake, seed in zip(fakes, seeds)
    ]
    replicates: dict[str, list[list[float]]] = {key: [] for key in DISTRIBUTION_KEYS}
    for fake, w_fake in zip(fakes, weights[1:]):
        replicates["fid"].append(replicate_values(FrechetReplicates(real, fake), weights[0], w_fake))
        replicates["kid_mean"].append(replicate_values(KIDReplicates(real, fake), weights[0], w_fake))
        pairs = replicate_values(PrecisionRecallReplicates(real, fake, int(cfg["pr_neighborhood"])), weights[0], w_fake)
        replicates["precision"].append([p for p, _ in pairs])
        replicates["recall"].append([r for _, r in pairs])
    level = float(cfg["bootstrap"]["level"])
    figures = {key: _mean([s[key] for s in per_set]) for key in (*DISTRIBUTION_KEYS, "kid_std")}
    return {
        "figures": figures,
        "intervals": {key: spread_interval(torch.tensor(values).mean(0), figures[key], level, *RANGES[key]) for key, values in replicates.items()},
        "per_seed": {key: [s[key] for s in per_set] for key in DISTRIBUTION_KEYS},
    }


def domain_fd(real: Tensor, fakes: list[Tensor], weights: list[Tensor], cfg: Any) -> tuple[float, list[float] | None, list[float]]:
    """FD in the judge's space (``fd_domain``): mean over sets, its interval, per-set values."""
    per_set = [frechet_distance(real, fake) for fake in fakes]
    values = [replicate_values(FrechetReplicates(real, fake), weights[0], w) for fake, w in zip(fakes, weights[1:])]
    estimate = _mean(per_set)
    return estimate, spread_interval(torch.tensor(values).mean(0), estimate, float(cfg["bootstrap"]["level"]), *RANGES["fid"]), per_set


def spread(per_seed: dict[str, list[float]]) -> dict[str, float | None]:
    """Standard deviation over evaluation seeds (null with a single seed)."""
    return {key: statistics.stdev(values) if len(values) > 1 else None for key, values in per_seed.items()}


def floor_scores(real: Tensor, floor: Tensor, real_weights: Tensor, cfg: Any, floor_split: str, eval_split: str, num_generated: int) -> dict[str, Any]:
    """The ``floor`` entry: real-vs-real figures at the generated sets' n (or fewer, said), with intervals."""
    scores = distribution_scores(real, [floor], [0], [real_weights, *bootstrap_weights([floor.shape[0]], cfg, stream=1)], cfg)
    n = int(floor.shape[0])
    size = "as many as each generated set" if n == num_generated else f"fewer than the {num_generated} of each generated set: the whole {floor_split} split"
    return {
        **{key: scores["figures"][key] for key in DISTRIBUTION_KEYS},
        "intervals": scores["intervals"],
        "n": n, "num_generated": int(num_generated), "num_real": int(real.shape[0]), "reference": f"{floor_split} vs {eval_split}",
        "definition": f"{n} real {floor_split} images, un-augmented ({size}), against the "
                      f"{real.shape[0]} real {eval_split} images the models are compared with",
    }
