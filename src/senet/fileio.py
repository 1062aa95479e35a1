"""Files that readers see whole or not at all: atomic writes (temporary file, fsync, rename,
fsync of the folder); and the one line a reader's error gives the user.

Every file senet writes (checkpoints, weights files, shards and their index, exports, detection outputs) goes
through :func:`atomic_write`, so a kill or a full disk mid-write leaves the previous file, never a torn one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes | Callable[[Path], None], suffix: str = ".tmp") -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a torn one.

    ``data`` is the bytes, or a function that writes the file at the temporary path it is given (e.g.
    safetensors' ``save_file``, which streams tensors without first building one large bytes object); whatever
    it raises (a failed check of what it wrote, say) leaves no file and ``path`` as it was. The temporary file
    is hidden beside ``path`` and ends in ``suffix`` (a loader that insists on ``.pt2`` can read it there).
    The file gets the mode a plain ``open`` would give (0666 less the umask), not mkstemp's private 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        if callable(data):
            os.close(fd)
            data(Path(tmp))  # the writer may replace the file: sync and chmod what is at the path afterwards
            fd = os.open(tmp, os.O_RDONLY)
            with os.fdopen(fd, "rb") as handle:
                os.fsync(handle.fileno())
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable: without this a power loss may forget that it happened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (libraries' messages can run over many lines), or its type's name
    when it has none: what senet's one-line errors quote of a cause."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
