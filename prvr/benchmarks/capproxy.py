"""Old name of :mod:`prvr.benchmarks.capproxy_dataset` (the ANet-CapProxy dataset builder), kept for old imports."""

from __future__ import annotations

from prvr.benchmarks.capproxy_dataset import *  # noqa: F401,F403
from prvr.benchmarks.capproxy_dataset import __all__  # noqa: F401
