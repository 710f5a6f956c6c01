"""`prvr serve`: the search service (HTTP API + web page) over one index directory, with uvicorn."""

from __future__ import annotations

import os
from pathlib import Path

import click

from prvr.commands.common import fail_cleanly

__all__ = ["serve_command"]

DEFAULT_REQUEST_QUERIES = 32  # ServiceSettings.max_request_queries


@click.command("serve")
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Index directory written by `prvr build-index`.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs an API key.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(min=0, max=65535),
              help="TCP port (0: any free port).")
@click.option("--api-key-env", default=None, metavar="NAME",
              help="Environment variable holding the API key (clients send it as X-API-Key). Unset: no key.")
@click.option("--max-k", default=100, show_default=True, type=click.IntRange(min=1), help="Most results per query.")
@click.option("--max-query-chars", default=512, show_default=True, type=click.IntRange(min=1, max=512),
              help="Longest accepted query (characters after cleaning; the search's own limit is 512).")
@click.option("--poll-interval", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds between checks for a new index generation (0: never).")
@click.option("--query-log", is_flag=True, help="Record every query in the index database (off: privacy).")
@click.option("--batch-window-ms", default=2.0, show_default=True, type=click.FloatRange(min=0, max=1000),
              help="How long a queued search waits for concurrent ones to join its batch (0: join what is queued).")
@click.option("--max-batch", default=64, show_default=True, type=click.IntRange(min=1),
              help="Most queries joined into one search call (1: no micro-batching).")
@click.option("--no-batching", is_flag=True,
              help="Search every request alone, in arrival order (latency-only deployments; bounds still hold).")
@click.option("--max-queue", default=256, show_default=True, type=click.IntRange(min=1),
              help="Most queries waiting at once; beyond it requests get 503 with Retry-After.")
@click.option("--request-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.01, max=3600),
              help="Seconds a search may wait in all (queue + search) before a 503 with Retry-After.")
@click.option("--search-workers", default=1, show_default=True, type=click.IntRange(min=1, max=64),
              help="Threads running search batches.")
@click.option("--max-request-queries", default=None, type=click.IntRange(min=1),
              help="Most queries in one POST /search (default 32, or --max-queue when that is smaller).")
@fail_cleanly
def serve_command(index_dir: str, host: str, port: int, api_key_env: str | None, max_k: int, max_query_chars: int,
                  poll_interval: float, query_log: bool, batch_window_ms: float, max_batch: int, no_batching: bool,
                  max_queue: int, request_timeout: float, search_workers: int, max_request_queries: int | None) -> None:
    """Serve search, video metadata and media, and the web page at http://HOST:PORT/.

    Concurrent searches are micro-batched (joined for up to --batch-window-ms into one search of up to --max-batch
    queries); a full queue or a request past --request-timeout is answered 503 with Retry-After.
    """
    import logging

    import uvicorn

    from prvr.services.app import ServiceSettings, check_bind, create_app
    from prvr.services.batcher import BatchSettings

    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env) or None
        if api_key is None:
            raise ValueError(f"--api-key-env {api_key_env}: the environment variable {api_key_env} is unset or "
                             f"empty; export {api_key_env}=<a long random key> first")
    check_bind(host, api_key)
    if no_batching:
        batch_window_ms, max_batch = 0.0, 1
    if max_request_queries is None:  # a request must fit the queue
        max_request_queries = min(DEFAULT_REQUEST_QUERIES, max_queue)
    batching = BatchSettings(window_ms=batch_window_ms, max_batch=max_batch, max_queue=max_queue,
                             timeout_s=request_timeout, workers=search_workers)
    settings = ServiceSettings(index_dir=Path(index_dir), api_key=api_key, max_k=max_k, max_query_chars=max_query_chars,
                               max_request_queries=max_request_queries, poll_interval_s=poll_interval,
                               query_log=query_log, batching=batching)
    if logging.getLogger("prvr.services").getEffectiveLevel() > logging.INFO:
        logging.getLogger("prvr.services").setLevel(logging.INFO)  # request lines are the server's output
    app = create_app(settings)
    click.echo(f"serving {index_dir} on http://{host}:{port}/ (API docs at /docs)", err=True)
    # our middleware logs every request; uvicorn's access log would repeat it
    uvicorn.run(app, host=host, port=port, access_log=False, log_config=None, timeout_graceful_shutdown=5)
