"""Errors of files being written, named: an OSError that names no file gets the path it was writing.

A write that fails after its file was opened (a full disk: ENOSPC comes from write() or close()), or one
raised by a library that does not pass the path on (PyAV, PyArrow), says only "[Errno 28] No space left
on device". Written inside `naming_the_file(path)`, it says which file:

    with naming_the_file(path):
        path.write_text(text)                # OSError(28, 'No space left on device', '<path>')
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def naming_the_file(path: str | Path) -> Iterator[None]:
    """Re-raise an OSError without a file name as the same error (errno, hence type) naming `path`; one that
    names a file already is left as it is (it is more precise)."""
    try:
        yield
    except OSError as error:
        if error.errno is None and " requested and " in str(error) and str(error).endswith(" written"):
            # numpy's short write ("184320 requested and 51168 written"): the disk filled up under it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from error
        if error.filename is not None or error.errno is None:
            raise
        # OSError(errno, ...) is built as the subclass of that errno (FileNotFoundError for 2), as Python's own.
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error


def write_text_naming_the_file(path: str | Path, text: str) -> None:
    """Path(path).write_text(text), its errors naming `path`."""
    with naming_the_file(path):
        Path(path).write_text(text)
