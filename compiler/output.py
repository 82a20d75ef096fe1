"""Output files that are never half-written: `write_atomic`, and the signal handlers that clean up.

On Linux the bytes go to an anonymous O_TMPFILE in the target folder, which gets a name only when
complete (so even SIGKILL leaves nothing behind) and is renamed over the target; elsewhere a named temp
file is renamed, and removed by the SIGTERM/SIGINT handlers if the run is cut.
"""
from __future__ import annotations

import errno
import os
import signal
import tempfile
from pathlib import Path

from compiler.errors import KpucError

TEMP_FILES: set[str] = set()  # named temp files to remove if a signal ends the run


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: nothing appears at `path` until every byte is written.

    On Linux the bytes go to an anonymous O_TMPFILE in the target folder, which is given a name
    only when complete (so SIGKILL leaves nothing behind) and renamed over `path`; elsewhere a
    named temp file is renamed, and removed by the SIGTERM/SIGINT handlers if the run is cut."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise KpucError(f"{path}: the output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise KpucError(f"{path}: the output folder {folder} is not writable")
    try:
        if hasattr(os, "O_TMPFILE") and _write_tmpfile(path, data):
            return
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".kpuc-tmp")
        TEMP_FILES.add(tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
            TEMP_FILES.discard(tmp)
    except IsADirectoryError:
        raise KpucError(f"{path}: is a directory") from None
    except OSError as e:
        raise KpucError(f"{path}: cannot write: {e.strerror or e}") from e


def _write_tmpfile(path: Path, data: bytes) -> bool:
    """Linux: write through O_TMPFILE, link it under a temp name, rename; False if unsupported here."""
    try:
        fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, 0o644)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return False  # a filesystem without O_TMPFILE: use a named temp file
        raise
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.kpuc-tmp")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, 0o644)
        TEMP_FILES.add(tmp)
        try:
            if not _link_fd(fd, tmp):
                return False
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
            TEMP_FILES.discard(tmp)
    finally:
        os.close(fd)
    return True


def _link_fd(fd: int, name: str) -> bool:
    """Give the anonymous file `fd` a name: linkat through /proc, else linkat(AT_EMPTY_PATH) (some
    kernels and sandboxes refuse the /proc route with EXDEV); False if neither works."""
    try:
        os.link(f"/proc/self/fd/{fd}", name)
        return True
    except OSError:
        pass
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, at_empty_path = -100, 0x1000
    return libc.linkat(fd, b"", at_fdcwd, os.fsencode(name), at_empty_path) == 0


def _on_signal(signum, frame):
    """SIGTERM/SIGINT: remove a named temp file being written, then die of the same signal."""
    for tmp in list(TEMP_FILES):
        try:
            os.unlink(tmp)
        except OSError:
            pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def remove_temp_files_on_signals() -> None:
    """Install the SIGTERM/SIGINT handlers (main thread only; an embedding test leaves signals alone)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(signum, _on_signal)
        except ValueError:
            pass
