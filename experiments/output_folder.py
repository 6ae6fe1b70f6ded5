"""The one rule for every command that writes a folder: a user's files are never replaced.

A command writes into a new or empty folder, or into one it wrote itself, recognised by its manifest
(``<command>.json`` in the folder: the entries it wrote, and the settings). ``overwrite=true`` then
deletes exactly what that manifest lists, and only when nothing else is in the folder: a user's own
files are never deleted, and never mixed into new outputs either. Nothing is deleted while checking,
so a command can check its folder first and clear it once its inputs were accepted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from datamodules.atomic import TEMP_NAME, write_text_atomic


def manifest_path(out: str | Path, command: str) -> Path:
    return Path(out) / f"{command}.json"


def _listed(manifest: Path) -> list[str]:
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{manifest} is not a readable manifest ({error}); choose an empty or new folder") from None
    if not isinstance(entries, list) or not all(isinstance(e, str) and e == Path(e).name and e not in ("", ".", "..") for e in entries):
        raise ValueError(f"{manifest} lists paths outside its folder; choose an empty or new folder")
    return entries


def check_output_folder(out: str | Path, command: str, *, overwrite: bool, key: str = "out") -> list[str]:
    """The entries of an earlier ``command`` output in ``out`` that ``clear_output_folder`` may delete.

    Raises ValueError naming ``key`` when ``out`` is a file, holds files ``command`` did not write, or
    holds its earlier output and ``overwrite`` is false. Returns [] for a new or empty folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{key}={out} is a file, not a folder; give a new folder (it is made) or an empty one")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        blocked = _not_writable(out)
        if blocked is not None:
            raise PermissionError(f"{key}={out} is not writable ({blocked}: permission denied); choose a folder you can write to")
        return []
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    manifest = manifest_path(out, command)
    if not manifest.is_file():
        raise ValueError(f"{key}={out} is not empty and holds files experiments.{command} did not write ({shown}); "
                         "choose a new or empty folder")
    listed = set(_listed(manifest))
    # an atomic write's leftover (.<name>.<8 chars>.tmp) of a listed entry is the command's own too
    listed |= {name for name in entries if TEMP_NAME.match(name) and name[1:].rsplit(".", 2)[0] in listed}
    foreign = [name for name in entries if name not in listed and name != manifest.name]
    if foreign:
        raise ValueError(f"{key}={out} holds files besides an earlier experiments.{command} output ({', '.join(foreign[:5])}); "
                         "they would mix with the new one. Move them or choose another folder; nothing was deleted")
    if not overwrite:
        raise ValueError(f"{key}={out} is not empty: it holds an earlier experiments.{command} output ({shown}); choose a new "
                         "folder, or overwrite=true to replace it")
    return [*sorted(listed), manifest.name]


def _not_writable(out: Path) -> Path | None:
    """``out`` (or, for a new folder, the nearest folder above it that exists) when this process cannot write there."""
    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return None if os.access(probe, os.W_OK | os.X_OK) else probe


def clear_output_folder(out: str | Path, entries: list[str]) -> Path:
    """Delete ``entries`` (from ``check_output_folder``) from ``out``, files and folders; returns ``out``."""
    out = Path(out)
    for name in entries:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return out


def write_manifest(out: str | Path, command: str, entries: list[str], record: dict[str, Any] | None = None, complete: bool = True) -> Path:
    """``out/<command>.json``: the entries the command writes there (before it writes them), its settings, whether whole."""
    Path(out).mkdir(parents=True, exist_ok=True)
    body = {"complete": complete, "files": sorted(set(entries)), **(record or {})}
    return write_text_atomic(manifest_path(out, command), json.dumps(body, indent=1, default=str))


def prepare_output_folder(out: str | Path, command: str, entries: list[str], *, overwrite: bool, key: str = "out",
                          record: dict[str, Any] | None = None) -> Path:
    """Check ``out``, clear an earlier output of ``command`` (with ``overwrite``), and list ``entries`` in its manifest."""
    clear_output_folder(out, check_output_folder(out, command, overwrite=overwrite, key=key))
    write_manifest(out, command, entries, record, complete=False)
    return Path(out)
