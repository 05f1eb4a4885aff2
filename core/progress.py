"""Progress bars for long command-line work (`rlhb train`, `rlhb demo`, `rlhb model prepare`,
`rlhb records export`): tqdm on stderr, so stdout keeps only the commands' results (tests and
scripts parse its JSON lines).

``--progress`` forces a bar, ``--no-progress`` hides it; without either the bar shows only when
stderr is a terminal (a log file or a CI run gets no carriage-return noise).
"""

from __future__ import annotations

import sys
from typing import Any

PROGRESS_HELP = "Progress bar on stderr (default: only when stderr is a terminal)."


def progress_enabled(flag: bool | None = None) -> bool:
    """The flag when given; else whether stderr is a terminal."""
    if flag is not None:
        return flag
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr: nobody is watching
        return False


def progress_bar(iterable: Any = None, *, enabled: bool | None = None, **kw: Any):
    """A tqdm bar on stderr, disabled unless ``progress_enabled(enabled)``."""
    from tqdm import tqdm

    kw.setdefault("dynamic_ncols", True)
    return tqdm(iterable, file=sys.stderr, disable=not progress_enabled(enabled), **kw)
