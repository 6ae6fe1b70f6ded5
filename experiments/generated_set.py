"""The folder ``experiments.generate`` writes, and when it may write into a folder that is not empty.

A generated set is a data set (``data=folder``) and an evaluation input (``evaluate fake=DIR``), so
stale or foreign files in it silently change results. ``generate.json`` lists every file a
generate call writes, before it writes them. A non-empty ``out`` is refused; ``overwrite=true``
deletes exactly the files an earlier call listed there, and only when nothing else is in the
folder: a user's own files are never deleted, and never mixed into a new set either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datamodules.atomic import write_text_atomic

MANIFEST = "generate.json"
TABLES = ("metadata.csv", "captions.csv", "ham10000_metadata.csv")


def planned_files(num_images: int, grid: bool) -> list[str]:
    """Every file a generate call may write (``ham10000_metadata.csv`` only when labels are known)."""
    return [f"{i:05d}.png" for i in range(num_images)] + list(TABLES) + ["NOTICE"] + (["grid.png"] if grid else [])


def _listed_files(manifest: Path) -> list[str]:
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{manifest} is not a readable generate manifest ({error}); choose an empty or new folder") from None
    if not isinstance(files, list) or not all(isinstance(f, str) and f == Path(f).name and f not in ("", ".", "..") for f in files):
        raise ValueError(f"{manifest} lists paths outside its folder; choose an empty or new folder")
    return files


def previous_set(out: str | Path, overwrite: bool) -> list[str]:
    """The files of an earlier set in ``out`` that ``clear_previous_set`` may delete; raises when ``out`` cannot take a new set.

    Nothing is deleted here, so a command can check its folder first and clear it only once the
    model has loaded and its settings were accepted.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={out} is a file, not a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return []
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    manifest = out / MANIFEST
    if not overwrite:
        raise ValueError(f"out={out} is not empty ({len(entries)} entries: {shown}); choose a new folder, or overwrite=true "
                         "to replace the outputs of an earlier experiments.generate there")
    if not manifest.is_file():
        raise ValueError(f"out={out} holds files experiments.generate did not write (no {MANIFEST}): {shown}. overwrite=true "
                         "only replaces a generate's own outputs; choose an empty or new folder")
    listed = set(_listed_files(manifest))
    foreign = [name for name in entries if name not in listed and name != MANIFEST]
    if foreign:
        raise ValueError(f"out={out} holds files besides an earlier generate's outputs ({', '.join(foreign[:5])}); they would mix "
                         "with the new set. Move them or choose another folder; nothing was deleted")
    return [*sorted(listed), MANIFEST]


def clear_previous_set(out: str | Path, files: list[str]) -> Path:
    """Delete ``files`` (from ``previous_set``) from ``out``; returns ``out``."""
    out = Path(out)
    for name in files:
        (out / name).unlink(missing_ok=True)
    return out


def write_manifest(out: str | Path, files: list[str], record: dict[str, Any], complete: bool) -> Path:
    """``out/generate.json``: the files of the set, the settings that made it, and whether it is whole."""
    return write_text_atomic(Path(out) / MANIFEST, json.dumps({"complete": complete, "files": files, **record}, indent=1, default=str))
