"""Staged writes: a model file and its external data file become visible together or not at all.

A model with external data is two files, and no rename moves two files at once. So a write
never reuses a data file name: each one writes ``<model>.<token>.data``, a name nobody refers
to yet, into a private folder beside the destination. Committing moves the data file into
place first (harmless: nothing reads it yet), then renames the model over the destination,
which is the one step that switches readers from the old pair to the new one, and only then
removes the data files that earlier writes of the same model left. A write killed at any point
leaves the old pair or the new one; what it leaves besides is removed by the next write into
the same folder.

Temp folders are named ``.onnxslim-<pid>-<token>.tmp``: recognisable, and a later write
removes one only when its process has gone, never the folder of a writer still at work.
Commits into one folder take turns (an ``flock`` on the folder), so that removing superseded
data files cannot race with another writer's rename.

>>> from pathlib import Path
>>> with StagedWrite(Path("out.onnx")) as staged:  # doctest: +SKIP
...     staged.model_path.write_bytes(serialized)
...     staged.commit()
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from onnxslim.errors import ModelSaveError

try:
    import fcntl
except ImportError:  # Windows: commits do not take turns there
    fcntl = None

__all__ = ["StagedWrite", "data_file_pattern"]

_TEMP_NAME = re.compile(r"\.onnxslim-(\d+)-[0-9a-f]{16}\.tmp")


def data_file_pattern(model_name: str) -> re.Pattern[str]:
    """The names of the data files that writes of ``model_name`` create."""
    return re.compile(re.escape(model_name) + r"\.[0-9a-f]{16}\.data")


class StagedWrite:
    """A private folder beside ``destination`` to write a model (and its data file) into,
    and the commit that moves them into place (see the module docstring).

    ``protected`` files are never removed as superseded data: the files a model being saved
    still reads from.
    """

    def __init__(self, destination: Path, protected: Iterable[Path] = ()) -> None:
        self.destination = Path(destination)
        self.protected = {Path(p).resolve() for p in protected}
        self.folder = self.destination.parent
        _check_destination(self.destination)
        token = secrets.token_hex(8)
        self.data_name = f"{self.destination.name}.{token}.data"
        remove_stale_temps(self.folder)
        self.temp = self.folder / f".onnxslim-{os.getpid()}-{token}.tmp"
        try:
            self.temp.mkdir()
        except OSError as exc:
            raise ModelSaveError(
                f"{self.destination}: cannot write in {self.folder} ({exc.strerror})"
            ) from exc
        self.committed = False

    @property
    def model_path(self) -> Path:
        """Where to write the model (its external data goes to :attr:`data_path`)."""
        return self.temp / self.destination.name

    @property
    def data_path(self) -> Path:
        return self.temp / self.data_name

    def files(self) -> list[Path]:
        """The files of the write as they are now: staged, or in place once committed."""
        folder = self.folder if self.committed else self.temp
        names = [self.destination.name, self.data_name]
        return [folder / name for name in names if (folder / name).exists()]

    def commit(self) -> None:
        """Make the staged model (and data file) the destination's, in an order that readers
        never see a model paired with another write's data."""
        has_data = self.data_path.exists()
        for path in (self.data_path, self.model_path) if has_data else (self.model_path,):
            _flush_to_disk(path)
        try:
            with _folder_lock(self.folder) as folder_fd:
                if has_data:
                    os.replace(self.data_path, self.folder / self.data_name)
                os.replace(self.model_path, self.destination)
                self.committed = True
                self._remove_superseded_data()
                if folder_fd is not None:
                    os.fsync(folder_fd)
        except OSError as exc:
            raise ModelSaveError(
                f"{self.destination}: cannot write ({exc.strerror or exc})"
            ) from exc

    def _remove_superseded_data(self) -> None:
        pattern = data_file_pattern(self.destination.name)
        for entry in os.scandir(self.folder):
            if (
                pattern.fullmatch(entry.name)
                and entry.name != self.data_name
                and Path(entry.path).resolve() not in self.protected
            ):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def discard(self) -> None:
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> StagedWrite:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()


def _check_destination(destination: Path) -> None:
    folder = destination.parent
    if not folder.is_dir():
        raise ModelSaveError(f"{folder}: output folder does not exist")
    try:
        status = destination.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ModelSaveError(f"{destination}: cannot write ({exc.strerror})") from None
    if stat.S_ISDIR(status.st_mode):
        raise ModelSaveError(f"{destination}: is a directory")
    if not stat.S_ISREG(status.st_mode):
        raise ModelSaveError(
            f"{destination}: exists and is not a regular file (a device, pipe or socket); "
            "choose a file path"
        )


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temp folders of writes into ``folder`` whose process has gone; the ones
    removed."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = _TEMP_NAME.fullmatch(entry.name)
            if match and not _process_alive(int(match.group(1))):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: alive as far as we can tell
    return True


def _flush_to_disk(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[int | None]:
    """Commits into one folder take turns; yields the folder's descriptor (for fsync)."""
    if fcntl is None:
        yield None
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock
