"""Files that are never half-written: write beside the target, then rename onto it.

A reader (or a resumed run) sees the old file or the new one, never a torn one: a run killed
during a save leaves the previous ``last.ckpt`` intact. The temporary file or folder is created
with the mode ``open`` and ``mkdir`` would give (0o666 / 0o777 minus the umask), so a run folder
on a shared disk stays as readable to the group as the user's other files.

Temporary names are ``.<name>.<8 characters>.tmp`` beside the target; a process killed mid-write
leaves one behind, and ``remove_stale_temp_files`` clears them at the next start.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# mkstemp's 8 characters ([a-z0-9_]) as well as ours (hex), so leftovers of either are found
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


@contextmanager
def atomic_path(path: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """A temporary file (or folder) beside ``path`` that replaces ``path`` when the block succeeds.

    The block writes to the yielded path by any means (``torch.save``, ``save_file``, a memmap).
    On an exception the temporary is removed and ``path`` is left as it was. Replacing an existing
    non-empty folder fails with ``OSError`` (another writer got there first).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    if directory:
        temp.mkdir(mode=0o777)  # the umask applies, as to any mkdir
    else:
        os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # likewise for the umask
    try:
        yield temp
        os.replace(temp, path)
    except BaseException as error:
        if temp.is_dir():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)
        if isinstance(error, Exception) and disk_full(error, path.parent):
            free = shutil.disk_usage(path.parent).free
            raise OSError(errno.ENOSPC, f"no space left on device writing {path} ({free} bytes free there); free space on that "
                          "disk, or point the output (paths.*) or the cache (DERMSYNTH_CACHE) elsewhere") from error
        raise


def disk_full(error: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of disk: ENOSPC anywhere in the exception chain (torch's writer loses the
    errno in a RuntimeError, so a write error on a disk with under 1 MiB free counts too)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return isinstance(error, (OSError, RuntimeError)) and "write" in str(error).lower() and shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode)`` that lands atomically and is on disk (fsync) before the rename."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write writes a whole file; mode must start with 'w', got {mode!r}")
    with atomic_path(path) as temp:
        with open(temp, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (e.g. ``safetensors.torch.save(...)``, whose own file
    writer creates files with mode 0600 whatever the umask); returns ``path``."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def umask_file_mode() -> int:
    """0o666 minus the process's umask: the mode ``open`` gives a new file."""
    try:  # Linux reports the umask without changing it (os.umask can only read by setting)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def apply_umask_mode(paths: Iterable[Path]) -> None:
    """Give files a library wrote itself (safetensors creates them 0600) the mode ``open`` would have."""
    mode = umask_file_mode()
    for path in paths:
        path.chmod(mode)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporaries an interrupted atomic write left directly in ``folder``; returns them.

    Call it only where no other process is writing at the time (a run folder at start, on rank 0):
    a temporary of a live writer looks the same as a stale one.
    """
    folder = Path(folder)
    removed = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if TEMP_NAME.match(entry.name):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
