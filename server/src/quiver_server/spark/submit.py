"""The entry point `spark-submit` runs on a Spark driver: the `quiver` command line.

The chart submits ``local:///.../quiver_server/spark/submit.py --repo DIR backfill ...``
in cluster mode; the driver's session (master, executors) comes from spark-submit, and
`offline_store.spark.master` must name the same master (the chart sets it in the driver's
environment) so the session Quiver asks for is that one.
"""

from __future__ import annotations

import sys

from quiver_server.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
