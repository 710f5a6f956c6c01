"""The project's benchmarks: dataset builders (``capproxy_dataset``), the measuring logic of each benchmark script
(``*_bench``) and the shared report helpers (``report``)."""

from __future__ import annotations
