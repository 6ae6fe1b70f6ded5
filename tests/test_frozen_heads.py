"""Linear heads on frozen features: a logistic regression that agrees with scikit-learn's, class-balanced by default."""

from __future__ import annotations

import torch

from models.classifier import fit_linear_head


def _blobs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sizes = (400, 60, 20)  # a majority class and two rare ones
    centres = torch.randn(3, 16, generator=generator) * 1.2
    x = torch.cat([centres[c] + torch.randn(n, 16, generator=generator) * 0.9 + 10 for c, n in enumerate(sizes)])
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    return x, y


def test_agrees_with_sklearn_and_balances_the_classes() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    x, y = _blobs(0)
    test_x, test_y = _blobs(1)
    y_with_unknown = y.clone()
    y_with_unknown[::50] = -1  # unknown targets are left out of the fit
    head = fit_linear_head(x, y_with_unknown, 3, seed=0)
    ours = head(test_x).argmax(1).numpy()
    reference = LogisticRegression(class_weight="balanced", max_iter=2000).fit(x.numpy(), y.numpy()).predict(test_x.numpy())
    assert (ours == reference).mean() > 0.9
    plain = fit_linear_head(x, y, 3, seed=0, balanced=False)(test_x).argmax(1).numpy()
    assert balanced_accuracy_score(test_y.numpy(), ours) > balanced_accuracy_score(test_y.numpy(), plain)
