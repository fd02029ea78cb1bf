"""Transformations both servers run: on-demand views and fitted transforms.

- `selection`: what a request selects (stored, on-demand, a service's transforms).
- `pipeline`: the one path from stored values and request data to output columns.
- `builtins`, `custom`, `on_demand`: the kernels and user functions it runs.
- `functions`: functions by import path, checked against the applied source hash.
- `params`: fitted parameter sets in the registry (current, pinned, recording).
- `engine`: builds pipelines and fits parameters for a server.
- `validate`, `plan_notes`, `commands`: `quiver apply`/`plan`, `quiver fit`, `quiver transforms`.
"""
