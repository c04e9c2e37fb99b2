"""Batch Process Coordinator: hands out numbered batch keys to workers, backed by Redis."""

__version__ = "0.1.0"
