"""The one way this project writes outputs: checked before the work, atomic, one-line errors, locked folders.

* ``check_outputs`` refuses, before any work, an output that is the same file as an input, or two outputs
  that are the same file (``os.path.samefile`` when both exist, else the resolved paths).
* ``prepare_output`` / ``prepare_output_dir`` find what can be known before a long run: a parent that is
  a regular file, a target that is a folder (or a file, for a folder), a name too long for the file system,
  a folder that cannot be written (read-only file system or permissions).
* ``atomic_output`` / ``atomic_directory`` write into a temporary file or folder beside the target (same
  file system, so the rename is atomic) and rename it into place only when the block succeeds; the
  temporary is removed on every failure, KeyboardInterrupt included. An ``OSError`` while writing (no
  space, read-only, quota, ...) becomes a ``UserError``: one line naming the target, exit 2.
* ``OutputLock`` is an advisory lock (``fcntl.flock``) on a file holding the pid and host, for a training
  output folder: a second run refuses naming the pid; a lock left by a killed run is taken over.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import UserError

log = logging.getLogger(__name__)

REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "a parent is not a directory",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMLINK: "too many links",
}
# errors that can only come from the write itself (an OSError naming another file is not ours to report)
WRITE_ERRNOS = frozenset(REASONS)
TEMP_PATTERN = re.compile(r"^\..+\.tmp-(\d+)$")
PATH_MAX = 4096


def output_error(path: str | Path, err: OSError) -> UserError:
    """An OSError raised while writing ``path``, as one line naming ``path``."""
    reason = REASONS.get(err.errno) if err.errno is not None else None
    return UserError(path, f"cannot write: {reason or err.strerror or type(err).__name__}")


# -------------------------------------------------------------------------------- same-file refusal
def _paths(value: Any) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    return [Path(v) for v in value if v is not None]


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` are the same file: ``os.path.samefile`` when both exist (hard links,
    symlinks), else the same absolute path once symlinks are resolved."""
    with contextlib.suppress(OSError):
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` resolves to a location inside the folder ``folder`` (not the folder itself)."""
    inner, outer = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return inner != outer and outer in inner.parents


def check_outputs(inputs: Mapping[str, Any], outputs: Mapping[str, Any], folders: bool = False,
                  prepare: bool = True) -> None:
    """Refuse an output that resolves to the same file as an input, or two outputs that are one file;
    then (``prepare``) run the pre-flight checks of ``prepare_output`` / ``prepare_output_dir`` on each.

    ``inputs`` and ``outputs`` map an option name (``--src``) to a path, ``None`` (not given) or an
    iterable of paths. With ``folders=True`` the outputs are folders and must also not lie inside an
    input folder.
    """
    seen: list[tuple[str, Path]] = []
    for option, paths in outputs.items():
        for out in _paths(paths):
            for in_option, values in inputs.items():
                for src in _paths(values):
                    if same_file(out, src):
                        raise UserError(out, f"is also the input {in_option}; choose another {option}")
                    if folders and os.path.isdir(src) and is_inside(out, src):
                        raise UserError(out, f"is inside the input folder {in_option} {src}; "
                                        f"choose another {option}")
            for other_option, other in seen:
                if same_file(out, other):
                    both = f"{other_option} and {option}" if other_option != option else f"{option} twice"
                    raise UserError(out, f"given as {both}: two outputs would be one file; "
                                    f"choose another {option}")
            seen.append((option, out))
    if prepare:
        for _, out in seen:
            (prepare_output_dir if folders else prepare_output)(out)


# -------------------------------------------------------------------------------- pre-flight checks
def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _nearest_existing(path: Path) -> Path:
    for parent in path.parents:
        if os.path.lexists(parent):
            return parent
    return Path(path.anchor or ".")


def _check_location(path: Path, kind: str) -> None:
    """Name lengths, a parent that is a file, and whether the nearest existing folder can be written."""
    absolute = Path(os.path.abspath(path))
    if len(os.fsencode(str(absolute))) >= PATH_MAX:
        raise UserError(path, f"cannot write: path too long ({len(os.fsencode(str(absolute)))} bytes)")
    ancestor = _nearest_existing(absolute)
    limit = _name_max(ancestor if os.path.isdir(ancestor) else ancestor.parent)
    for part in absolute.parts[1:]:
        if len(os.fsencode(part)) > limit:
            raise UserError(path, f"cannot write: file name too long ({len(os.fsencode(part))} bytes, "
                            f"the file system allows {limit})")
    if not os.path.isdir(ancestor):
        raise UserError(path, f"cannot write: {ancestor} is a file, not a folder")
    target = absolute if os.path.isdir(absolute) and kind == "folder" else ancestor
    if not os.access(target, os.W_OK | os.X_OK):
        readonly = False
        with contextlib.suppress(OSError):
            readonly = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
        reason = "read-only file system" if readonly else "permission denied"
        raise UserError(path, f"cannot write: {reason} ({target})")


def prepare_output(path: str | Path) -> Path:
    """Check, before the work, that the file ``path`` can be written; returns it as a ``Path``."""
    path = Path(path)
    if os.path.isdir(path):
        raise UserError(path, "is a directory; give a file name")
    _check_location(path, "file")
    return path


def prepare_output_dir(path: str | Path) -> Path:
    """Check, before the work, that the folder ``path`` can be created or written into."""
    path = Path(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(path, "is a file, not a folder")
    _check_location(path, "folder")
    return path


# ------------------------------------------------------------------------------------ atomic writers
def temp_path(path: Path) -> Path:
    """``.<name>.tmp-<pid>`` beside ``path``, with the name shortened to fit the file system's limit."""
    suffix = f".tmp-{os.getpid()}"
    name = path.name
    limit = _name_max(path.parent) if os.path.isdir(path.parent) else 255
    while len(os.fsencode(f".{name}{suffix}")) > limit:
        name = name[:-1]
    return path.with_name(f".{name}{suffix}")


def _ours(err: OSError, *paths: Path) -> bool:
    """Whether ``err`` came from writing ``paths`` (or anything under them), not from some other file."""
    names = [os.fsdecode(n) for n in (err.filename, err.filename2) if n is not None]
    if not names:
        return err.errno in WRITE_ERRNOS
    return any(n == str(p) or n.startswith(str(p) + os.sep) for n in names for p in paths)


def _os_error(err: BaseException) -> OSError | None:
    """``err`` if it is an OSError, else the OSError it was raised while handling (torch.save turns a
    failed write into a RuntimeError from its zip writer, with the OSError as context)."""
    for _ in range(8):
        if err is None or isinstance(err, UserError):  # already a one-line error: keep it
            return None
        if isinstance(err, OSError):
            return err
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    The temporary file is removed on any failure (KeyboardInterrupt too); an OSError from writing it or
    renaming it becomes a one-line ``UserError`` naming ``path``.
    """
    path = prepare_output(path)
    tmp = temp_path(path)
    with _writing(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)


@contextlib.contextmanager
def _writing(path: Path, tmp: Path) -> Iterator[None]:
    """Around writing ``tmp`` and renaming it to ``path``: an OSError about either becomes one line naming
    ``path``; ``tmp`` is removed on any failure (KeyboardInterrupt too)."""
    try:
        try:
            yield
        except Exception as err:
            cause = _os_error(err)
            if cause is None or not _ours(cause, tmp, path):
                raise
            raise output_error(path, cause) from None
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` only if the block succeeds.

    ``path`` must not exist or be an empty folder, so that nothing a user has is overwritten.
    """
    path = prepare_output_dir(path)
    if os.path.isdir(path) and any(path.iterdir()):
        raise UserError(path, "already exists and is not an empty folder; choose a new output folder")
    tmp = temp_path(path)
    with _writing(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
        tmp.mkdir()
        yield tmp
        if os.path.isdir(path):
            path.rmdir()
        os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>`` files and folders left in ``folder`` by processes that no longer run
    (a killed run); returns what was removed."""
    removed = []
    for entry in Path(folder).iterdir():
        match = TEMP_PATTERN.match(entry.name)
        if match and not pid_alive(int(match.group(1))):
            _remove(entry)
            removed.append(entry)
    return removed


# ----------------------------------------------------------------------------------- output folder lock
_HELD_LOCKS: set[int] = set()  # descriptors of the locks this process holds


def _close_inherited_locks() -> None:
    """In a forked child (data-loader workers): drop the inherited lock descriptors, so that the lock
    is released when the process that took it dies, even while its workers linger."""
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class OutputLock:
    """An advisory lock on ``folder`` while a run uses it: ``folder/<name>`` holds ``<pid> <host>`` and is
    ``flock``-ed. A second run refuses with one line naming the first's pid. The kernel releases a
    ``flock`` when its process dies, so a file left by a killed run is stale and taken over (logged).
    """

    def __init__(self, folder: str | Path, name: str = ".lock", option: str = "--output"):
        self.folder, self.path, self.option = Path(folder), Path(folder) / name, option
        self.fd: int | None = None
        self.stale: str | None = None  # the holder recorded in a stale lock that was taken over

    def _holder(self, fd: int) -> str:
        with contextlib.suppress(OSError):
            return os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
        return ""

    def acquire(self) -> OutputLock:
        import fcntl

        for _ in range(50):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as err:
                raise output_error(self.path, err) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = ""
                for _ in range(20):  # the holder writes its pid right after locking
                    holder = self._holder(fd)
                    if holder:
                        break
                    time.sleep(0.05)
                os.close(fd)
                pid, _, host = holder.partition(" ")
                who = f"pid {pid}" + (f" on {host}" if host else "") if pid else "another process"
                raise UserError(self.folder, f"in use by another run ({who}; lock {self.path}): wait for it "
                                f"to finish or choose another {self.option}") from None
            except OSError as err:
                os.close(fd)
                raise output_error(self.path, err) from None
            try:  # a releasing holder unlinks the file: make sure we locked the file that is at the path
                current, mine = os.stat(self.path), os.fstat(fd)
                if (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
                    raise FileNotFoundError
            except FileNotFoundError:
                os.close(fd)
                continue
            previous = self._holder(fd)
            if previous:
                self.stale = previous
                log.warning("%s: taking over the stale lock of pid %s (no longer running)", self.path,
                            previous.replace(" ", " on ", 1))
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            except OSError as err:
                os.close(fd)
                raise output_error(self.path, err) from None
            self.fd = fd
            _HELD_LOCKS.add(fd)
            return self
        raise UserError(self.folder, f"could not lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # still holding the lock: nobody else holds this file
        _HELD_LOCKS.discard(self.fd)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_names(rank: int) -> str:
    """Each rank of a multi-process run locks its own file (rank 0's is the one every run takes)."""
    return ".lock" if rank == 0 else f".lock-rank{rank}"


__all__ = ["atomic_directory", "atomic_output", "check_outputs", "output_error", "OutputLock", "prepare_output",
           "prepare_output_dir", "remove_stale_temporaries", "same_file", "is_inside", "lock_names"]
