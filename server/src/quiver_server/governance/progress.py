"""Progress of history rewrites (erasure, compaction), and the bars the CLI draws.

Rewrites report through a callback receiving `RewriteProgress`; libraries never
print. The command line passes `RewriteBars`, which draws one tqdm bar per view
on stderr (none off a terminal).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Never, TextIO

from tqdm import tqdm


@dataclass(frozen=True)
class RewriteProgress:
    """How far one view's rewrite got.

    Attributes:
        task: "erasure" (files checked) or "compaction" (groups merged).
        view: The feature view.
        done: Units done so far.
        total: Units in all.
    """

    task: str
    view: str
    done: int
    total: int


RewriteCallback = Callable[[RewriteProgress], None]


def ignore(progress: RewriteProgress) -> None:
    """A callback that reports nowhere."""


class RewriteBars:
    """A `RewriteCallback` drawing a bar per view; close it when done."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._bar: tqdm[Never] | None = None
        self._view = ""

    def __call__(self, event: RewriteProgress) -> None:
        if self._bar is None or event.view != self._view:
            self.close()
            unit = " files" if event.task == "erasure" else " groups"
            self._bar = tqdm(desc=f"{event.view}: {event.task}", total=event.total, unit=unit,
                             file=self.stream, disable=None, leave=False, mininterval=0.2)
            self._view = event.view
        self._bar.update(event.done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> RewriteBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
