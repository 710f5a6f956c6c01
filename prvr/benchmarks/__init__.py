"""Builders of the project's benchmarks from public annotations (see ``prvr.benchmarks.capproxy``)."""

from __future__ import annotations
