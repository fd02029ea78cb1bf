"""Progress bars the CLI draws for materialization (tqdm), from the progress callback.

One bar per view while it runs, on stderr: rows read, then rows written out of
the entities to write; a finished view leaves one summary line. Off a terminal
(a CronJob's log) no bar is drawn, only the summary lines.
"""

from __future__ import annotations

import sys
from typing import Never, TextIO

from tqdm import tqdm

from quiver_server.materialize import MaterializeProgress


class MaterializeBars:
    """A `ProgressCallback` drawing materialization with tqdm; close it when done."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._bar: tqdm[Never] | None = None

    def __call__(self, event: MaterializeProgress) -> None:
        if event.phase == "start":
            self.close()
            self._bar = tqdm(desc=f"{event.view}: reading", unit=" rows", unit_scale=True,
                             file=self.stream, disable=None, leave=False, mininterval=0.2)
        elif event.phase in ("read", "write") and self._bar is not None:
            bar = self._bar
            if event.phase == "write" and bar.total != event.total:
                bar.set_description(f"{event.view}: writing", refresh=False)
                bar.reset(total=event.total)
            bar.update(event.rows - bar.n)
        elif event.phase == "done":
            self.close()
            tqdm.write(str(event.result), file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> MaterializeBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
