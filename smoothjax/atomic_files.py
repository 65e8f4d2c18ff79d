"""Writing a file so that readers see either the old file or the whole new one, never a torn write."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomically(path, content: str | Callable[[Path], object]) -> None:
    """Writes ``path`` in one step: to a temporary sibling first, then ``os.replace`` onto ``path``.

    Args:
      path: destination file (its directory must exist).
      content: the text to write, or ``write(tmp_path)`` that writes the file (e.g. ``fig.savefig``).

    Guarantee: ``os.replace`` is atomic on POSIX and Windows within one file system, so a killed process leaves
    either the previous ``path`` or the complete new one (plus, at worst, a stray ``.<name>.tmp<pid>``).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if callable(content):
        content(tmp)
    else:
        tmp.write_text(content)
    os.replace(tmp, path)
