"""Entry points: run, generate, evaluate, augment, report, export, bench. Configs live in configs/."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
