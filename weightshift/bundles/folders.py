"""The folders bundle commands write to, checked before any work, and what an operating
system error on a path means in words.

A folder to create or fill (``bundle init DIR``, ``bundle pull ID DEST``) is refused with one
paragraph naming the path and the fix when it is a file, when a folder above it is a file,
when it lies under ``/proc`` or ``/sys`` (kernel file systems: nothing of a bundle can be
written there), on a read-only file system, or where the user may not write. An error the
checks could not foresee (a disk filling up, a file unreadable halfway) is put in the same
words by :func:`explain`.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

KERNEL_FILE_SYSTEMS = (Path("/proc"), Path("/sys"))


class FolderError(ValueError):
    """A path a command cannot use; the message names it and the fix."""


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else the nearest folder (or file) above it that does."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def check_folder_to_write(path: Path, what: str) -> None:
    """Refuse ``path`` as a folder to create or fill when it cannot be one (module doc).

    ``what`` names the argument in the message (``DEST``, ``DIR``). Whether the folder may
    already hold files is the command's own rule, checked after this."""
    absolute = Path(os.path.abspath(path))
    for kernel in KERNEL_FILE_SYSTEMS:
        if absolute == kernel or kernel in absolute.parents:
            raise FolderError(
                f"{what} {path} is under {kernel}, a kernel file system that holds no files of "
                "yours: give a folder on a disk instead (a new folder, or an empty one)."
            )
    if path.exists() and not path.is_dir():
        raise FolderError(
            f"{what} {path} is a file, not a folder: give the name of a new folder (or an "
            "empty one) instead."
        )
    ancestor = _existing_ancestor(absolute)
    if not ancestor.is_dir():
        raise FolderError(
            f"{what} {path}: {ancestor} is a file, not a folder, so no folder can be made "
            f"inside it. Give a path whose parent is a folder (or does not exist yet)."
        )
    if os.access(ancestor, os.W_OK | os.X_OK):
        return
    if os.statvfs(ancestor).f_flag & os.ST_RDONLY:
        raise FolderError(
            f"{what} {path}: {ancestor} is on a read-only file system. Give a folder on a "
            "writable disk (or mount this one read-write)."
        )
    raise FolderError(
        f"{what} {path}: permission denied: you may not write in {ancestor}. Give a folder you "
        "own, or ask its owner for write access."
    )


_FIXES = {
    errno.EACCES: "permission denied: give a path you may use, or ask its owner for access",
    errno.EPERM: "not permitted: give a path you may use, or ask its owner for access",
    errno.EROFS: "a read-only file system: give a folder on a writable disk",
    errno.ENOTDIR: "a folder in the path is a file: give a path made of folders",
    errno.EISDIR: "a folder where a file was expected: give the file's path",
    errno.ENOENT: "it does not exist: check the path",
    errno.ENOSPC: "no space left on the device: free some, or use another disk",
    errno.EDQUOT: "the disk quota is used up: free some space, or use another disk",
    errno.ENAMETOOLONG: "the name is too long: give a shorter path",
}


def explain(error: OSError) -> str:
    """An operating system error on a path, as one sentence naming the path and the fix."""
    where = error.filename if error.filename is not None else "a file"
    fix = _FIXES.get(error.errno or 0)
    if fix is None:
        fix = f"{error.strerror or error}: check the path and run again"
    return f"{where}: {fix}. Nothing more was done."
