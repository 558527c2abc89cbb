"""Every write of a run goes through here: atomic replacement, appends that roll back, preallocated memory maps,
and one exception (WriteFailed, exit code 5) for a disk that is full, too small, read-only or failing.

A write that fails with an OS error (ENOSPC, EDQUOT, EFBIG, EROFS, EACCES, EPERM, EIO) leaves no partial file a
reader would take for whole: a replaced file keeps its old content, an appended line is cut off again, a new file
is removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import resource
except ImportError:  # Windows
    resource = None

from greedy.errors import WriteFailed

_OS_CODE = re.compile(r"(?:os error|code:?) (\d+)")  # safetensors / Rust io errors: "... (os error 27)"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_like_umask(path: Path) -> None:
    """Give a file the mode a plain open() would (0666 minus the umask); some writers (safetensors, mkstemp)
    create 0600 files that colleagues sharing a run directory cannot read."""
    os.chmod(path, 0o666 & ~_umask())


def os_reason(err: BaseException) -> tuple[int | None, str]:
    """(errno, strerror) of a failed write: an OSError's own, or the OS error code a library put in its message
    (safetensors: "File too large (os error 27)"), else (None, the message's first line)."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno, err.strerror or os.strerror(err.errno)
    match = _OS_CODE.search(str(err))
    if match:
        code = int(match[1])
        return code, os.strerror(code)
    text = str(err).strip().splitlines()
    return None, text[0] if text else type(err).__name__


def diagnose(path: Path, message: str) -> tuple[int | None, str]:
    """The likely OS error behind a serializer's message that lost it (torch.save: "basic_ios::clear: iostream
    error"): a full file system (ENOSPC), a file-size limit (EFBIG, `ulimit -f`), a read-only or unwritable folder
    (EROFS, EACCES), else (None, the message)."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if shutil.disk_usage(folder).free == 0:
            return errno.ENOSPC, os.strerror(errno.ENOSPC)
    except OSError:
        pass
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource is not None else -1
    if limit not in (-1, resource.RLIM_INFINITY if resource is not None else -1):
        return errno.EFBIG, f"{os.strerror(errno.EFBIG)} (the file-size limit is {limit} bytes)"
    if not os.access(folder, os.W_OK):
        return errno.EACCES, os.strerror(errno.EACCES)
    return None, message


def is_write_error(err: BaseException) -> bool:
    """True for an exception that a failed write raises: an OSError, or a serializer's wrapping of one
    (safetensors' SafetensorError; torch.save's RuntimeErrors "PytorchStreamWriter failed writing file",
    "basic_ios::clear: iostream error")."""
    if isinstance(err, OSError):
        return True
    text = str(err)
    return type(err).__name__ == "SafetensorError" or (isinstance(err, RuntimeError) and any(
        m in text for m in ("failed writing", "file write failed", "iostream error", "unexpected pos")))


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn a failed write inside the block into WriteFailed(path, errno, reason); other exceptions pass through.

    Raises:
        WriteFailed: the block raised an OSError or a serializer's wrapped OS error while writing `path`.
    """
    try:
        yield
    except WriteFailed:
        raise
    except Exception as err:
        if not is_write_error(err):
            raise
        code, reason = os_reason(err)
        if code is None:
            code, reason = diagnose(Path(path), reason)
        raise WriteFailed(Path(path), code, reason) from None


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` into a hidden temporary file beside `path`, then rename it over `path`: readers see the old
    file or the new one, never a part. On failure the temporary file is removed and `path` is unchanged.

    Raises:
        WriteFailed: the write or the rename failed with an OS error.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with writing(path):
            write(tmp)
            share_like_umask(tmp)
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path: Path, data: bytes | str) -> None:
    """Replace `path`'s content with `data` atomically (atomic_write)."""
    data = data.encode() if isinstance(data, str) else data
    atomic_write(path, lambda p: p.write_bytes(data))


def append_text(path: Path, text: str) -> None:
    """Append `text` (whole lines) to `path`; if the write fails, the file is cut back to its old length, so no
    half line is left for a reader.

    Raises:
        WriteFailed: the append failed with an OS error.
    """
    path = Path(path)
    with writing(path):
        with path.open("a") as f:
            start = f.tell()
            try:
                f.write(text)
                f.flush()
            except BaseException:
                with contextlib.suppress(OSError):
                    f.truncate(start)
                raise


def preallocate(path: Path, nbytes: int) -> None:
    """Create `path` with `nbytes` of disk space reserved (posix_fallocate where the OS has it), so that a full
    disk fails here with ENOSPC, not later as a SIGBUS inside a memory-mapped tensor. Removes the file on failure.

    Raises:
        WriteFailed: the space cannot be reserved (ENOSPC, EFBIG, EROFS, ...).
    """
    path = Path(path)
    try:
        with writing(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                if hasattr(os, "posix_fallocate"):
                    try:
                        os.posix_fallocate(fd, 0, max(nbytes, 1))
                    except OSError as err:
                        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # file systems without fallocate
                            raise
                        os.ftruncate(fd, nbytes)
                else:
                    os.ftruncate(fd, nbytes)
            finally:
                os.close(fd)
    except BaseException:
        _remove(path)
        raise
