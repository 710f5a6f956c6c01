"""`prvr train-moments`, `prvr localize` and `prvr select-moments`: train the moment denoiser, localise a query in one
video, re-measure a checkpoint's localiser settings."""

from __future__ import annotations

import dataclasses
import json

import click

from prvr.commands.common import fail_cleanly

__all__ = ["train_moments_command", "localize_command", "select_moments_command"]



@click.command("train-moments")
@click.option("--data", "root", required=True, type=click.Path(exists=True, file_okay=False), help="Data root.")
@click.option("--collection", required=True, help="Collection name (needs <collection><split>.moments.jsonl).")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--preset", default="cpu", show_default=True,
              help="Moment preset (tiny, cpu, diffusionvmr_cpu, default) or a JSON file.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Config override, e.g. --set train.epochs=5 --set network.decoder=diffusionvmr (repeatable).")
@click.option("--video-feature", default=None, help="FeatureData/<name> to use (sets data.video_feature).")
@click.option("--text-feature", default=None, help="Query feature name (sets data.text_feature).")
@click.option("--retrieval-checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Condition on this DreamPRVR checkpoint's frame tokens (what the index stores).")
@click.option("--train-split", default="train", show_default=True, metavar="[COLLECTION:]SPLIT",
              help="Training split, e.g. capproxy_pretrain:train to pre-train on another collection (validation "
                   "stays on --collection); COLLECTION defaults to --collection, as in prvr train.")
@click.option("--init-from", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Fine-tune: start from this moment checkpoint's weights (new optimizer and history; its network, "
                   "diffusion and data must match this run's).")
@click.option("--val-split", default="val", show_default=True)
@click.option("--seed", type=int, default=None, help="Override the preset's seed.")
@click.option("--max-train-queries", type=click.IntRange(min=1), default=None, help="Train on the first N queries.")
@click.option("--max-val-queries", type=click.IntRange(min=1), default=None, help="Validate on the first N queries.")
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/last.pt.")
@click.option("--no-select", is_flag=True,
              help="Skip the final measurement of every localiser setting on the validation queries (the best one "
                   "is otherwise recorded in best.pt and used by search).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
@fail_cleanly
def train_moments_command(root: str, collection: str, run_dir: str, preset: str, overrides: tuple[str, ...],
                          video_feature: str | None, text_feature: str | None, retrieval_checkpoint: str | None,
                          train_split: str, val_split: str, seed: int | None, max_train_queries: int | None,
                          max_val_queries: int | None, resume: bool, no_progress: bool,
                          init_from: str | None, no_select: bool) -> None:
    """Train the moment denoiser; prints one JSON line per epoch (losses, val R1@IoU / mAP), writes best/last.pt."""
    from prvr.commands.train_cli import parse_train_split
    from prvr.moments.config import apply_moment_overrides, load_moment_preset
    from prvr.moments.train import train_moments

    pairs = (("data.video_feature", video_feature), ("data.text_feature", text_feature))
    overrides = overrides + tuple(f"{path}={json.dumps(value)}" for path, value in pairs if value is not None)
    config = apply_moment_overrides(load_moment_preset(preset), list(overrides))
    if seed is not None:
        config = dataclasses.replace(config, seed=seed)
    train_collection, train_split = parse_train_split(train_split, collection)
    result = train_moments(root, collection, run_dir, config, train_split=train_split, val_split=val_split,
                           train_collection=train_collection, init_from=init_from,
                           retrieval_checkpoint=retrieval_checkpoint, resume=resume, progress=not no_progress,
                           max_train_queries=max_train_queries, max_val_queries=max_val_queries,
                           select=not no_select,
                           on_epoch=lambda record: click.echo(json.dumps(record)))
    if result.selection is not None:
        click.echo(json.dumps({"inference_selection": result.selection.rows}))
    chosen = dataclasses.asdict(result.selection.best) if result.selection is not None else None
    click.echo(json.dumps({"best_epoch": result.best_epoch, "best": result.best_metrics, "chosen_inference": chosen,
                           "epochs_run": result.epochs_run, "checkpoint": str(result.best_path)}))


@click.command("localize")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="A moment best.pt / last.pt.")
@click.option("--data", "root", required=True, type=click.Path(exists=True, file_okay=False), help="Data root.")
@click.option("--collection", required=True, help="Collection name.")
@click.option("--split", default="val", show_default=True, help="Caption split holding the query.")
@click.option("--query-id", required=True, help="Cap id of the query (e.g. v_abc#enc#0); its video is used.")
@click.option("--retrieval-checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="The DreamPRVR checkpoint of a 'retrieval'-conditioned localiser.")
@click.option("-n", "--num-moments", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--spans", default=None, type=click.IntRange(min=1), help="Spans sampled (default: config).")
@click.option("--steps", default=None, type=click.IntRange(min=1), help="DDIM steps (default: config).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fail_cleanly
def localize_command(checkpoint: str, root: str, collection: str, split: str, query_id: str,
                     retrieval_checkpoint: str | None, num_moments: int, spans: int | None, steps: int | None,
                     as_json: bool) -> None:
    """Localise one query of a split inside its video; prints the moments (seconds) and the ground truth."""
    from prvr.data.dataset import PRVRCorpus
    from prvr.moments.localizer import load_localizer
    from prvr.moments.train import frame_source

    localizer = load_localizer(checkpoint)
    config = localizer.config
    if config.condition == "retrieval" and retrieval_checkpoint is None:
        raise ValueError(f"{checkpoint} conditions on retrieval frame tokens; pass --retrieval-checkpoint")
    corpus = PRVRCorpus(root, collection, split, config.data)
    record = next((r for r in corpus.queries if r.query_id == query_id), None)
    if record is None:
        raise ValueError(f"query {query_id!r} is not in split {split!r} of {collection!r}; pick a cap id from "
                         f"{corpus.caption_file}")
    frames = frame_source(corpus, retrieval_checkpoint if config.condition == "retrieval" else None)
    video = frames(record.video_id)
    duration = record.duration if record.duration else float(video.shape[0])
    result = localizer.localize(corpus.query_tokens(query_id), video, duration, num_moments=num_moments,
                                num_spans=spans, steps=steps)
    out = {"query_id": query_id, "video_id": record.video_id, "text": record.text, "duration": duration,
           "ground_truth": [list(w) for w in record.windows],
           "moments": [dataclasses.asdict(m) for m in result.moments]}
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"{record.text!r} in {record.video_id} ({duration:.1f} s); ground truth {out['ground_truth']}")
    for rank, moment in enumerate(result.moments, start=1):
        click.echo(f"{rank:>2}. {moment.start_sec:8.2f} - {moment.end_sec:8.2f} s  p={moment.score:.3f}")


@click.command("select-moments")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A moment best.pt to re-measure; its recorded setting is replaced (atomically).")
@click.option("--data", "root", required=True, type=click.Path(exists=True, file_okay=False), help="Data root.")
@click.option("--collection", required=True, help="Collection name.")
@click.option("--split", default="val", show_default=True, help="Split of the selection queries.")
@click.option("--max-queries", type=click.IntRange(min=1), default=None,
              help="Measure on the first N queries (the selection queries; on capproxy 500).")
@click.option("--retrieval-checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="The DreamPRVR checkpoint of a 'retrieval'-conditioned localiser.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
@fail_cleanly
def select_moments_command(checkpoint: str, root: str, collection: str, split: str, max_queries: int | None,
                           retrieval_checkpoint: str | None, no_progress: bool) -> None:
    """Measure every localiser setting of the current grid on a checkpoint and record the best (what search uses).

    What `prvr train-moments` does after its last epoch, for a checkpoint trained before the grid grew; prints the
    measured rows and the chosen setting as JSON.
    """
    from prvr.moments.localizer import load_localizer
    from prvr.moments.train import localizer_split_data, record_inference_selection, select_inference

    localizer = load_localizer(checkpoint)
    data = localizer_split_data(localizer, checkpoint, root, collection, split,
                                retrieval_checkpoint=retrieval_checkpoint, max_queries=max_queries)
    selection = select_inference(localizer, data, batch_size=localizer.config.train.eval_batch_size,
                                 progress=not no_progress)
    record_inference_selection(checkpoint, selection)
    click.echo(json.dumps({"inference_selection": selection.rows, "queries": selection.queries,
                           "chosen_inference": dataclasses.asdict(selection.best), "checkpoint": checkpoint}))
