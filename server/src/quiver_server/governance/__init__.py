"""Governance: training datasets, lineage, privacy erasure, compaction and the catalog.

Everything here is recorded next to the registry, under
``<registry>/governance/`` (see `paths`), except the kept spines of training
datasets, which live with the data under ``<offline root>/_datasets/``.
"""
