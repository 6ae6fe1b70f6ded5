"""The folder ``experiments.generate`` writes, and when it may write into a folder that is not empty.

A generated set is a data set (``data=folder``) and an evaluation input (``evaluate fake=DIR``), so
stale or foreign files in it silently change results. ``generate.json`` lists every file a
generate call writes, before it writes them; the rule is every command's (``experiments.output_folder``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.output_folder import check_output_folder, clear_output_folder
from experiments.output_folder import write_manifest as write_output_manifest

MANIFEST = "generate.json"
TABLES = ("metadata.csv", "captions.csv", "ham10000_metadata.csv")


def planned_files(num_images: int, grid: bool) -> list[str]:
    """Every file a generate call may write (``ham10000_metadata.csv`` only when labels are known)."""
    return [f"{i:05d}.png" for i in range(num_images)] + list(TABLES) + ["NOTICE"] + (["grid.png"] if grid else [])


def previous_set(out: str | Path, overwrite: bool) -> list[str]:
    """The files of an earlier set in ``out`` that ``clear_previous_set`` may delete; raises when ``out`` cannot take a new set."""
    return check_output_folder(out, "generate", overwrite=overwrite)


def clear_previous_set(out: str | Path, files: list[str]) -> Path:
    """Delete ``files`` (from ``previous_set``) from ``out``; returns ``out``."""
    return clear_output_folder(out, files)


def write_manifest(out: str | Path, files: list[str], record: dict[str, Any], complete: bool) -> Path:
    """``out/generate.json``: the files of the set, the settings that made it, and whether it is whole."""
    return write_output_manifest(out, "generate", files, record, complete)
