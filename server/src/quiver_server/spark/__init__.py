"""The `spark` offline engine: Quiver's offline work as Spark jobs.

Everything here needs PySpark (`pip install 'quiver-feature-store[spark]'`);
nothing outside this package imports it, so the serving image and the client
never load it. Modules are imported only when `offline_store.engine` is
`spark` (or a command asks for it).
"""
