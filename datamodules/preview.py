"""Look at your data before training: a captioned grid of one split.

    python -m datamodules.preview data=phantom out=grid.png
    python -m datamodules.preview data=ham10000 data.root=/data/HAM10000 data.image_size=64 n=24 split=val out=ham.png

``data=...`` and ``data.<key>=...`` compose the same ``experiments/configs/data/<source>.yaml`` a
run uses; ``out`` (default ``grid.png``), ``n`` (16), ``split`` (train), ``seed`` (0) and
``tile`` (display size per image, 160 px) are the preview's own. Augmentation is off.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

# A path, not an import: datamodules must not import the experiments package.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "experiments" / "configs"
OWN_KEYS = ("out", "n", "split", "seed", "tile")


def parse_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    own: dict[str, str] = {"out": "grid.png", "n": "16", "split": "train", "seed": "0", "tile": "160"}
    overrides: list[str] = []
    source = "phantom"
    for arg in argv:
        if "=" not in arg:
            raise SystemExit(f"preview: arguments are key=value, got {arg!r}; e.g. data=phantom out=grid.png")
        key, value = arg.split("=", 1)
        if key in OWN_KEYS:
            own[key] = value
        elif key == "data":
            source = value
        else:
            overrides.append(arg if key.startswith("data.") else f"data.{key}={value}")
    return own | {"data": source}, overrides


def build_datamodule(source: str, seed: int, overrides: list[str]):
    """The data module of ``data/<source>.yaml`` with ``overrides``, as ``experiments.run`` would build it."""
    valid = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
    if source not in valid:
        raise SystemExit(f"preview: unknown data={source!r}; valid: {valid}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(overrides=[f"+data={source}", "+paths=default", f"+seed={seed}", "data.augment=false", "data.num_workers=0", *overrides])
    return instantiate(cfg.data)


def save_grid(images: np.ndarray, captions: list[str], path: Path, tile: int = 160) -> Path:
    """Images (N, H, W, 3) uint8 in a grid with each caption wrapped beneath its image."""
    n = len(images)
    cols = min(4, n)
    rows = -(-n // cols)
    inches = tile / 80
    figure, axes = plt.subplots(rows, cols, figsize=(cols * inches, rows * inches * 1.5), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < n:
            axis.imshow(images[index], interpolation="nearest")
            text = "\n".join(textwrap.wrap(captions[index], 38)[:9])
            axis.text(0.5, -0.04, text, transform=axis.transAxes, fontsize=6.2, ha="center", va="top")
    figure.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=0.09, wspace=0.06, hspace=0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> Path:
    own, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    datamodule = build_datamodule(own["data"], int(own["seed"]), overrides)
    datamodule.setup()
    dataset = {"train": datamodule.train_set, "val": datamodule.val_set, "test": datamodule.test_set}[own["split"]]
    rng = np.random.default_rng(int(own["seed"]))
    rows = np.sort(rng.choice(len(dataset), size=min(int(own["n"]), len(dataset)), replace=False))
    images = np.stack([np.asarray(dataset.table.images[r]) for r in rows])
    path = save_grid(images, [dataset.captions[r] for r in rows], Path(own["out"]), int(own["tile"]))
    print(f"wrote {path} ({len(rows)} {own['split']} images of {own['data']} at {datamodule.info.image_size} px)")
    return path


if __name__ == "__main__":
    main()
