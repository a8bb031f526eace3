"""The version of pipeloom-core, kept equal to its pyproject by a packaging test."""

__version__ = "0.1.0"
