"""`prvr build-index` and `prvr query` (write an index, search it) and `prvr index
info|add|remove|calibrate|prune` (inspect and maintain it)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from prvr.commands.common import (
    VIDEO_OPTIONS_HELP,
    corpus_to_index,
    fail_cleanly,
    feature_overrides,
    moment_frames_corpus,
    text_backbone_record,
)

__all__ = ["build_index_command", "calibration_summary", "query_command", "index_group"]

# prvr.index.calibrate's defaults, spelled out so that the CLI starts without importing torch / faiss (a test keeps
# them equal)
DEFAULT_NUM_QUERIES = 500
DEFAULT_CANDIDATE_GRID = (100, 200, 400)
DEFAULT_NPROBE_GRID = (32, 64, 128, 256, 512)
DEFAULT_HELD_OUT_FRACTION = 0.3
DEFAULT_CONFIDENCE = 0.95
# prvr.index.prune's defaults, for the same reason
DEFAULT_PRUNE_KEEP = 1
DEFAULT_PRUNE_MIN_AGE_S = 600.0
# prvr.index.search.DEFAULT_REFINE_K, for the same reason
DEFAULT_REFINE_K = 50


@click.group("index")
def index_group() -> None:
    """Inspect and maintain an index: info, add, remove, calibrate (each change is a new generation), prune."""


@index_group.command("info")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fail_cleanly
def info_command(index_dir: str, as_json: bool) -> None:
    """Generations, counts, FAISS factories, nprobe and the active manifest."""
    from prvr.index.layout import open_active

    with open_active(Path(index_dir)) as active:
        generations = [
            {"id": g.id, "directory": g.directory, "status": g.status.value, "videos": g.num_videos,
             "ntotal": g.ntotal, "created_at": g.created_at.isoformat(timespec="seconds")}
            for g in active.db.generations()
        ]
        statuses = {status.value: count for status, count in active.db.count_by_status().items()}
    manifest = active.manifest
    info = {
        "index": str(index_dir),
        "active": active.generation.directory,
        "generations": generations,
        "video_status": statuses,
        "counts": manifest.counts,
        "factories": {kind: manifest.faiss[kind]["factory"] for kind in ("clip", "frame")},
        "nlist": {kind: manifest.faiss[kind]["nlist"] for kind in ("clip", "frame")},
        "nprobe": {kind: manifest.search_defaults.get("nprobe", manifest.faiss[kind]["nprobe"])
                   if manifest.faiss[kind]["nlist"] else None for kind in ("clip", "frame")},
        "search_defaults": manifest.search_defaults,
        "manifest": json.loads(manifest.to_json()),
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"index {index_dir}: active generation {active.generation.directory}")
    click.echo(f"{'id':>4}  {'directory':<12} {'status':<9} {'videos':>8} {'tokens':>10}  created")
    for g in generations:
        click.echo(f"{g['id']:>4}  {g['directory']:<12} {g['status']:<9} {g['videos']:>8} {g['ntotal']:>10}  "
                   f"{g['created_at']}")
    click.echo(f"factories: clip {info['factories']['clip']}, frame {info['factories']['frame']}; "
               f"nlist {info['nlist']['clip']} / {info['nlist']['frame']}, nprobe {info['nprobe']['clip']} / "
               f"{info['nprobe']['frame']}")
    click.echo(f"search defaults: {json.dumps(manifest.search_defaults, sort_keys=True)}")
    source = manifest.data_source
    click.echo(f"checkpoint {manifest.checkpoint_path} ({manifest.checkpoint_sha256[:12]}...); last data "
               f"{source.get('collection')}/{source.get('split')}")
    moments = manifest.moment_checkpoint
    click.echo(f"moment checkpoint: {moments['path'] + ' (' + moments['sha256'][:12] + '...)' if moments else 'none'}")
    if manifest.moment_localizer is not None:
        click.echo(f"moment localiser: {json.dumps(manifest.moment_localizer, sort_keys=True)}")
    if manifest.calibration:
        for line in calibration_summary(manifest.calibration):
            click.echo(f"calibrated: {line}")
    click.echo(f"video status: {json.dumps(statuses, sort_keys=True)}")


@index_group.command("add")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "root", default=None, type=click.Path(exists=True, file_okay=False),
              help="Data root of features in the standard layout (or give --videos).")
@click.option("--collection", default=None, help="Collection name (folder under the data root).")
@click.option("--split", default=None, help="Caption split whose videos are added.")
@click.option("--videos", multiple=True, type=click.Path(exists=True), help=VIDEO_OPTIONS_HELP)
@click.option("--backbone", default=None, help="Frame backbone for --videos (default: the one the index used).")
@click.option("--fps", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Features per second of video for --videos.")
@click.option("--device", default="auto", show_default=True, help="Frame backbone device for --videos.")
@click.option("--video-feature", default=None, help="FeatureData/<name> (default: the checkpoint's).")
@click.option("--text-feature", default=None, help="Query feature name (default: the checkpoint's).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--checkpoint-every", default=50_000, show_default=True, type=click.IntRange(min=0),
              help="Videos between resume snapshots of a FAISS build: a killed or interrupted build, run again with "
                   "the same arguments, resumes from its last snapshot (0: no snapshots, no resume).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@fail_cleanly
def add_command(index_dir: str, root: str | None, collection: str | None, split: str | None,
                videos: tuple[str, ...], backbone: str | None, fps: float, device: str, video_feature: str | None,
                text_feature: str | None, batch_size: int, checkpoint_every: int, no_progress: bool) -> None:
    """Add a split's videos (those not indexed yet) as a new generation, with the index's own checkpoint."""
    from prvr.index.builder import build_index
    from prvr.index.layout import open_active

    with open_active(Path(index_dir)) as active:
        manifest = active.manifest
    checkpoint = Path(index_dir) / manifest.checkpoint_path
    config = _checkpoint_config(checkpoint, video_feature, text_feature)
    corpus, collection = corpus_to_index(config, index_dir, videos=videos, root=root, collection=collection,
                                         split=split, split_is_option=True, verb="add", backbone=backbone, fps=fps,
                                         device=device, progress=not no_progress, match_indexed_videos=True,
                                         check_feature_backbone=config.model.kind == "zero_shot")
    moment_corpus = None
    if manifest.moment_frames is not None and manifest.moment_checkpoint is not None and not videos:
        moment_corpus = moment_frames_corpus(Path(index_dir) / manifest.moment_checkpoint["path"], root, collection,
                                             split)
    result = build_index(checkpoint, corpus, index_dir, collection_name=collection, batch_size=batch_size,
                         checkpoint_every=checkpoint_every, progress=not no_progress, moment_corpus=moment_corpus)
    click.echo(json.dumps({"index": str(index_dir), "generation": result.generation_id,
                           "videos": result.num_videos, "new_videos": result.new_videos, "tokens": result.ntotal}))


@index_group.command("remove")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("video_ids", nargs=-1)
@click.option("--from-file", "id_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A text file with one video id per line (added to VIDEO_IDS).")
@click.option("--no-compact", is_flag=True, help="Keep the removed videos' bytes in the token store.")
@fail_cleanly
def remove_command(index_dir: str, video_ids: tuple[str, ...], id_file: str | None, no_compact: bool) -> None:
    """Remove videos by external id as a new generation (the previous one stays for rollback)."""
    from prvr.index.builder import remove_videos

    ids = list(video_ids)
    if id_file:
        ids += [line.strip() for line in Path(id_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise ValueError("no video ids given; pass them as arguments or with --from-file")
    result = remove_videos(index_dir, ids, compact=not no_compact)
    click.echo(json.dumps({"index": str(index_dir), "generation": result.generation_id, "removed": len(set(ids)),
                           "videos": result.num_videos, "tokens": result.ntotal}))


@index_group.command("prune")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--keep", default=DEFAULT_PRUNE_KEEP, show_default=True, type=click.IntRange(min=0),
              help="Retired generations kept, most recently retired first (rollback targets).")
@click.option("--min-age", "min_age_s", default=DEFAULT_PRUNE_MIN_AGE_S, show_default=True,
              type=click.FloatRange(min=0),
              help="Seconds: a generation retired more recently is kept (a service may still answer from it).")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fail_cleanly
def prune_command(index_dir: str, keep: int, min_age_s: float, dry_run: bool, as_json: bool) -> None:
    """Remove the data of retired generations no longer needed (FAISS directories, Milvus collections).

    Never the active generation, nor the KEEP most recently retired, nor one retired less than MIN_AGE seconds ago;
    also removes what crashed builds left. Takes the build lock (fails while a build runs); safe to rerun after an
    interruption (docs/deploy.md).
    """
    from prvr.index.prune import prune_generations

    report = prune_generations(index_dir, keep=keep, min_age_s=min_age_s, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps({"index": str(index_dir), **report.as_dict()}, indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    for entry in report.removed:
        click.echo(f"{verb} generation {entry['generation']} ({entry['directory']}, {entry['status']}): "
                   f"{entry['reason']}")
    for entry in report.kept:
        click.echo(f"kept generation {entry['generation']} ({entry['directory']}): {entry['reason']}")
    for entry in report.directories:
        click.echo(f"{verb} directory generations/{entry['directory']} ({entry['bytes']} bytes)")
    for name in report.collections:
        click.echo(f"{verb} Milvus collection {name}")
    click.echo(f"{verb} {len(report.removed)} generations, {len(report.directories)} directories "
               f"({report.bytes_freed / 2**20:.1f} MiB), {len(report.collections)} collections")


def _int_list(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers such as 50,100,200, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{name} needs positive integers, got {text!r}")
    return values


def _margin_option(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    """``--margin``: ``auto`` (None: the statistical bound) or a fixed margin in [0, 1)."""
    if value.strip().lower() == "auto":
        return None
    try:
        margin = float(value)
    except ValueError:
        raise click.BadParameter(f"must be 'auto' or a number in [0, 1) such as 0.005, got {value!r}") from None
    if not 0 <= margin < 1:
        raise click.BadParameter(f"a fixed margin must lie in [0, 1), got {value!r}")
    return margin


@index_group.command("calibrate")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--target", default=0.99, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Video-level recall@K to reach on queries the choice has not seen.")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="K of recall@K.")
@click.option("--queries", "num_queries", default=DEFAULT_NUM_QUERIES, show_default=True,
              type=click.IntRange(min=1),
              help="Calibration queries, fitting and held-out parts together (a sample of the split's queries, at "
              "most all of them, or queries made from stored tokens).")
@click.option("--data", "root", default=None, type=click.Path(exists=True, file_okay=False),
              help="Data root of real query features (else queries made from stored tokens).")
@click.option("--collection", default=None, help="Collection of the query features.")
@click.option("--split", default=None, help="Caption split of the query features.")
@click.option("--candidates", "candidates_grid", default=None,
              help="Comma-separated candidate counts (exact re-rank list sizes) to try (default "
              f"{','.join(map(str, DEFAULT_CANDIDATE_GRID))}).")
@click.option("--knob-grid", default=None, help="Comma-separated nprobe (IVF) / efSearch (HNSW) values to try "
              f"(default nprobe {','.join(map(str, DEFAULT_NPROBE_GRID))} clipped to nlist, efSearch 16..512).")
@click.option("--held-out-fraction", default=DEFAULT_HELD_OUT_FRACTION, show_default=True,
              type=click.FloatRange(0, 1, max_open=True),
              help="Share of the queries held out to verify the choice (0: no check).")
@click.option("--margin", "margin", default="auto", show_default=True, callback=_margin_option,
              help="Recall the fitting part must clear above --target: 'auto' (a one-sided lower confidence bound "
              "at --confidence) or a fixed number such as 0.005.")
@click.option("--confidence", default=DEFAULT_CONFIDENCE, show_default=True,
              type=click.FloatRange(0.5, 1, min_open=True, max_open=True),
              help="Confidence level of the 'auto' margin.")
@click.option("--cost-by", default="model", show_default=True, type=click.Choice(["model", "latency"]),
              help="Rank settings by the work model (machine-independent) or the measured latency.")
@click.option("--seed", default=0, show_default=True, type=int, help="Query sampling and fitting / held-out split "
              "seed.")
@click.option("--dry-run", is_flag=True, help="Measure and print, but do not store the choice.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fail_cleanly
def calibrate_command(index_dir: str, target: float, k: int, num_queries: int, root: str | None,
                      collection: str | None, split: str | None, candidates_grid: str | None, knob_grid: str | None,
                      held_out_fraction: float, margin: float | None, confidence: float, cost_by: str, seed: int,
                      dry_run: bool, as_json: bool) -> None:
    """Measure recall@K against exact search over a grid, choose the cheapest setting clearing --target with a
    margin on the fitting queries, verify it on the held-out ones, and store it."""
    import numpy as np

    from prvr.index.builder import rewrite_manifest
    from prvr.index.calibrate import calibrate, heldout_token_queries
    from prvr.retriever import Retriever

    if (root is None) != (collection is None) or (root is not None and split is None):
        raise ValueError("real query features need --data, --collection and --split together; omit all three to "
                         "calibrate on held-out stored tokens")
    grid_n = _int_list(candidates_grid, "--candidates") or list(DEFAULT_CANDIDATE_GRID)
    grid_knob = _int_list(knob_grid, "--knob-grid")
    with Retriever.load(index_dir, localizer=None) as retriever:
        if root is not None:
            queries, source = _real_queries(retriever, root, str(collection), str(split), num_queries, seed)
        else:
            finest = retriever.refine if retriever.refine is not None else retriever.store
            queries = heldout_token_queries(finest, num_queries, seed=seed)
            source = "heldout_tokens"
        weights = {"clip_weight": retriever.config.model.clip_weight,
                   "frame_weight": retriever.config.model.frame_weight}
        result = calibrate(retriever.faiss_index, retriever.store, np.asarray(queries, dtype=np.float32), k=k,
                           target=target, n_candidates_grid=grid_n, knob_grid=grid_knob, query_source=source,
                           held_out_fraction=held_out_fraction, margin=margin, confidence=confidence, seed=seed,
                           cost_by=cost_by, video_term=retriever.video_term, refine=retriever.refine,
                           refine_k=retriever.refine_k, **weights)  # type: ignore[arg-type]
        manifest = retriever.manifest
    if not dry_run:
        defaults = {key: value for key, value in manifest.search_defaults.items()
                    if key not in ("nprobe", "ef_search")}
        defaults.update(result.search_defaults())
        rewrite_manifest(index_dir, dataclasses.replace(manifest, search_defaults=defaults,
                                                        calibration=result.to_dict()))
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "stored": not dry_run}, indent=2))
        return
    knob = result.knob
    held = result.num_held_out_queries > 0
    click.echo(f"{knob or '':>9}  {'candidates':>10}  {'fit':>7}  {'fit low':>7}  {'held-out' if held else '':>8}  "
               f"{'all':>7}  {'ms/query':>8}  {'cost':>12}")
    for entry in result.grid:
        mark = " <- chosen" if entry == result.chosen else ""
        held_out = f"{entry['held_out_recall']:>8.4f}" if held else f"{'':>8}"
        click.echo(f"{entry.get(knob, '') if knob else '':>9}  {entry['n_candidates']:>10}  "
                   f"{entry['fit_recall']:>7.4f}  {entry['fit_lower_bound']:>7.4f}  {held_out}  "
                   f"{entry['recall']:>7.4f}  {entry['ms_per_query']:>8.2f}  {entry['cost']:>12.0f}{mark}")
    for entry in result.escalated_from:
        setting = ", ".join(f"{key} {entry[key]}" for key in (knob, "n_candidates") if key)
        click.echo(f"held-out check failed at {setting} (held-out recall {entry['held_out_recall']:.4f} < {target}): "
                   "stepped to the next more expensive setting")
    for line in calibration_summary(result.to_dict()):
        click.echo(line)
    click.echo(f"{'stored in the manifest' if not dry_run else 'dry run, nothing stored'}")


def calibration_summary(calibration: dict[str, Any]) -> list[str]:
    """Lines describing a stored ``calibration`` (also one written before the held-out check)."""
    k, target = calibration["k"], calibration["target"]
    chosen = calibration["chosen"]
    verdict = "reached" if calibration["reached"] else "NOT reached (best fallback kept)"
    lines = [f"target recall@{k} {target}: {verdict}; {calibration['num_queries']} {calibration['query_source']} "
             "queries"]
    if calibration.get("bank_corrected"):
        lines[0] += "; scored with the index's query-bank term (what search returns)"
    if "num_fit_queries" not in calibration:  # written before the held-out check
        lines[0] += f"; recall@{k} {chosen['recall']:.4f} on the calibration queries (no held-out check)"
        return lines
    lines.append(f"fitting part: {calibration['num_fit_queries']} queries, recall {chosen['fit_recall']:.4f}, lower "
                 f"bound {chosen['fit_lower_bound']:.4f} (margin {calibration['margin']:.4f}, "
                 f"{calibration['margin_method']})")
    if calibration["num_held_out_queries"]:
        check = "passed" if calibration["held_out_passed"] else "FAILED"
        lines.append(f"held-out part: {calibration['num_held_out_queries']} queries, recall "
                     f"{chosen['held_out_recall']:.4f}: check {check}")
    else:
        lines.append("held-out part: none (no check)")
    return lines


def _real_queries(retriever: Any, root: str, collection: str, split: str, num_queries: int,
                  seed: int) -> tuple[Any, str]:
    """Encoded query vectors (Nq, D) of a sample of a split's captions."""
    import numpy as np

    from prvr.commands.common import open_corpus
    from prvr.data.dataset import iter_query_batches

    config = retriever.config
    corpus = open_corpus(root, collection, split, config, expected_text_dim=config.model.text_dim)
    vectors = []
    for batch, _ in iter_query_batches(corpus, 256):
        vectors.append(retriever.model.encode_queries(batch).float().cpu().numpy())  # (B, D)
    everything = np.concatenate(vectors)  # (Nq_all, D)
    if everything.shape[0] > num_queries:
        rows = np.sort(np.random.default_rng(seed).choice(everything.shape[0], num_queries, replace=False))
        everything = everything[rows]
    return everything, f"{collection}/{split}"


# ----------------------------------------------------------------------------------------------------------------
# write an index, search it


def _checkpoint_config(checkpoint: str | Path, video_feature: str | None, text_feature: str | None) -> Any:
    """The experiment config saved in a checkpoint, with ``--video-feature`` / ``--text-feature`` applied."""
    from prvr.checkpoint import checkpoint_config
    from prvr.config import apply_overrides

    return apply_overrides(checkpoint_config(checkpoint), list(feature_overrides(video_feature, text_feature)))


@click.command("build-index")
@click.option("--checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="best.pt / last.pt (or give --zero-shot).")
@click.option("--zero-shot", is_flag=True,
              help="No checkpoint: index with the backbone's own image-text space (a CLIP / SigLIP --backbone for "
                   "--videos, whose text tower then encodes the queries; or --data features sharing one space).")
@click.option("--zero-shot-clip-weight", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="With --zero-shot: weight of the max-clip score (the frame score gets 1 - it).")
@click.option("--zero-shot-events", is_flag=True,
              help="With --zero-shot: add each video's training-free event tokens (prvr.events, the model.events "
                   "defaults: Haar scales 2,4,8, at most 8 per video); off by default (docs/BENCHMARKS.md, zero-shot).")
@click.option("--data", "root", default=None, type=click.Path(exists=True, file_okay=False),
              help="Data root of features in the standard layout (or give --videos).")
@click.option("--collection", default=None, help="Collection name (folder under the data root).")
@click.option("--split", default="test", show_default=True, help="Caption split whose videos are indexed.")
@click.option("--videos", multiple=True, type=click.Path(exists=True), help=VIDEO_OPTIONS_HELP)
@click.option("--backbone", default=None,
              help="Frame backbone for --videos, <kind>:<model folder or hub id> (default: "
                   "clip:openai/clip-vit-base-patch32); must be the checkpoint's when it records one.")
@click.option("--fps", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Features per second of video for --videos.")
@click.option("--device", default="auto", show_default=True, help="Frame backbone device for --videos.")
@click.option("--out", "index_dir", required=True, type=click.Path(file_okay=False), help="Index directory.")
@click.option("--video-feature", default=None, help="FeatureData/<name> (default: the checkpoint's).")
@click.option("--text-feature", default=None, help="Query feature name (default: the checkpoint's).")
@click.option("--factory", default=None, help="FAISS factory string (default: chosen by corpus size).")
@click.option("--text-backbone", default=None,
              help="Query text encoder recorded for `prvr query` / `prvr serve`: clip:PATH or siglip:PATH (the text "
                   "tower of the model the frames were extracted with), 'minilm-l6', or a local model folder; must be "
                   "the text backbone of the checkpoint's query features when it records one.")
@click.option("--moment-checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Moment localiser checkpoint, copied into the index; `prvr query` then shows moments.")
@click.option("--candidates", default=None, type=click.IntRange(min=1),
              help="Default candidate videos per query (default 200, or the previous generation's).")
@click.option("--query-bank", default=None,
              help="Hubness correction of a new index: a text file of representative queries (one a line, encoded "
                   "with the index's text encoder) or a caption split of --data (e.g. train); each video's term "
                   "mean top-k s(bank, v) is stored and search scores s(q, v) - alpha * term(v).")
@click.option("--bank-k", default=200, show_default=True, type=click.IntRange(min=1),
              help="With --query-bank: bank queries averaged per video.")
@click.option("--bank-alpha", default=0.5, show_default=True, type=float,
              help="With --query-bank: weight a of the subtracted term.")
@click.option("--token-dtype", default="bfloat16", show_default=True,
              help="Re-rank token store encoding of a new index: bfloat16, float32 (scores equal `prvr eval`'s, 2x "
                   "bytes), or compressed: pqM (M bytes per token, M dividing the model's D, e.g. pq32; codebook "
                   "trained with the config's seed, reused by `prvr index add`), pcaK (K <= D principal directions, "
                   "K + 4 bytes, trained likewise), sq8 (D + 4 bytes), sq4 (D/2 + 4). See docs/bench/token_store.md.")
@click.option("--refine-dtype", default=None,
              help="Second token tier of a new index beside a compressed --token-dtype (e.g. --token-dtype pca32 "
                   "--refine-dtype sq8): the compressed store keeps its best --refine-k candidate videos and this "
                   "finer store (sq8, bfloat16, float32; in refine/) re-scores them, so recall no longer rests on the "
                   "coarse scores. Default: none (one tier); later builds keep the index's tiers.")
@click.option("--refine-k", default=DEFAULT_REFINE_K, show_default=True, type=int,
              help="With --refine-dtype: candidate videos the compressed tier keeps for the finer one to re-score "
                   "(at least -k are kept).")
@click.option("--database-url", default=None,
              help="SQLAlchemy URL of a new index's metadata (e.g. postgresql+psycopg://prvr:${PRVR_DB_PASSWORD}@host/"
                   "prvr; ${VAR} is read from the environment when opened). Default: index.db inside --out.")
@click.option("--backend", default=None, type=click.Choice(["faiss", "milvus"]),
              help="Token-index back-end of a new index (default faiss; later builds keep the index's). milvus: "
                   "collections in a Milvus engine (--engine-url); --factory is then a Milvus index type (FLAT, ...).")
@click.option("--engine-url", default=None,
              help="Milvus engine of a new --backend milvus index: a local *.db file (embedded milvus-lite) or "
                   "http://host:19530; credentials from $PRVR_MILVUS_TOKEN, never written to disk.")
@click.option("--engine-shards", default=1, show_default=True, type=click.IntRange(min=1),
              help="Shards per Milvus collection (fixed at creation).")
@click.option("--engine-replicas", default=1, show_default=True, type=click.IntRange(min=1),
              help="In-memory replicas each Milvus collection is loaded with (a cluster's query nodes).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--checkpoint-every", default=50_000, show_default=True, type=click.IntRange(min=0),
              help="Videos between resume snapshots of a FAISS build: a killed or interrupted build, run again with "
                   "the same arguments, resumes from its last snapshot (0: no snapshots, no resume).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@fail_cleanly
def build_index_command(checkpoint: str | None, zero_shot: bool, zero_shot_clip_weight: float,
                        zero_shot_events: bool, root: str | None,
                        collection: str | None, split: str,
                        videos: tuple[str, ...], backbone: str | None, fps: float, device: str, index_dir: str,
                        video_feature: str | None, text_feature: str | None, factory: str | None,
                        text_backbone: str | None, moment_checkpoint: str | None, candidates: int | None,
                        query_bank: str | None, bank_k: int, bank_alpha: float, token_dtype: str,
                        refine_dtype: str | None, refine_k: int, database_url: str | None, backend: str | None, engine_url: str | None,
                        engine_shards: int, engine_replicas: int, batch_size: int, checkpoint_every: int,
                        no_progress: bool) -> None:
    """Encode a split's videos once and index their clip and frame tokens (a new generation, committed last)."""
    import tempfile

    from prvr.index.builder import build_index, check_refine_tier, check_token_dtype
    from prvr.index.layout import is_index_dir

    check_token_dtype(token_dtype)  # before any feature extraction
    check_refine_tier(token_dtype, refine_dtype, refine_k, first_build=not is_index_dir(index_dir))
    if engine_url is not None and backend != "milvus":
        raise click.UsageError("--engine-url is the engine of --backend milvus; add --backend milvus")
    engine = {"url": engine_url, "shards": engine_shards, "replicas": engine_replicas}
    text_record = text_backbone_record(text_backbone)
    with tempfile.TemporaryDirectory(prefix="prvr-zero-shot-") as scratch:
        if zero_shot:
            checkpoint, backbone, text_record = _zero_shot_checkpoint(
                Path(scratch), checkpoint, videos=videos, backbone=backbone, root=root, collection=collection,
                split=split, video_feature=video_feature, text_feature=text_feature, text_record=text_record,
                clip_weight=zero_shot_clip_weight, events=zero_shot_events)
        elif zero_shot_events:
            raise ValueError("--zero-shot-events adds event tokens to a --zero-shot index; drop it with --checkpoint")
        elif checkpoint is None:
            raise ValueError("give --checkpoint (a trained model) or --zero-shot (a CLIP / SigLIP backbone's own "
                             "space, no training)")
        config = _checkpoint_config(checkpoint, video_feature, text_feature)
        if text_record is not None:
            from prvr.text_encoders import check_text_backbone

            check_text_backbone(config.data.text_backbone, text_record["id"], what=f"checkpoint {checkpoint}",
                                found_what="--text-backbone")
        corpus, collection = corpus_to_index(config, index_dir, videos=videos, root=root, collection=collection,
                                             split=split, split_is_option=False, verb="index", backbone=backbone,
                                             fps=fps, device=device, progress=not no_progress,
                                             match_indexed_videos=False, check_feature_backbone=True)
        bank = None
        if query_bank is not None:
            bank = {"query_bank": _encode_query_bank(query_bank, checkpoint, config, root, collection, text_record),
                    "bank_k": bank_k, "bank_alpha": bank_alpha, "bank_source": _bank_source(query_bank)}
        # a localiser reading raw frames gets its own tokens stored at its resolution (index.moment_frames)
        moment_corpus = moment_frames_corpus(moment_checkpoint, root, collection, split) if not videos else None
        result = _build(build_index, checkpoint, corpus, index_dir, collection, factory, batch_size, text_record,
                        candidates, moment_checkpoint, token_dtype, database_url, backend, engine, no_progress,
                        {**(bank or {}), "checkpoint_every": checkpoint_every, "refine_dtype": refine_dtype,
                         "refine_k": refine_k, "moment_corpus": moment_corpus})
    click.echo(json.dumps({"index": str(index_dir), "generation": result.generation_id,
                           "videos": result.num_videos, "new_videos": result.new_videos, "tokens": result.ntotal}))


def _zero_shot_checkpoint(scratch: Path, checkpoint: str | None, *, videos: tuple[str, ...], backbone: str | None,
                          root: str | None, collection: str | None, split: str, video_feature: str | None,
                          text_feature: str | None, text_record: dict[str, Any] | None,
                          clip_weight: float, events: bool = False) -> tuple[str, str | None, dict[str, Any] | None]:
    """--zero-shot: write the zero-shot checkpoint (built into the index's models/ like any other) into ``scratch``.

    Returns:
        (checkpoint path, frame backbone spec for --videos, query text encoder record).
    """
    from prvr.features.backbones import DEFAULT_IMAGE_BACKBONE
    from prvr.zero_shot import features_setup, joint_backbone_setup, save_zero_shot_checkpoint

    if checkpoint is not None:
        raise ValueError("give --checkpoint or --zero-shot, not both")
    weights = {"clip_weight": clip_weight, "frame_weight": 1.0 - clip_weight}
    if videos:
        setup = joint_backbone_setup(backbone or DEFAULT_IMAGE_BACKBONE, **weights)
        if text_record is not None:
            raise ValueError("with --zero-shot --videos the queries are encoded by the backbone's own text tower; "
                             "drop --text-backbone")
    elif root is not None and collection is not None:
        if video_feature is None or text_feature is None:
            raise ValueError("--zero-shot --data needs --video-feature and --text-feature (features of one space)")
        setup = features_setup(root, collection, split, video_feature=video_feature, text_feature=text_feature,
                               text_backbone=text_record, **weights)
    else:
        raise ValueError("nothing to index: give --videos DIR (with a CLIP / SigLIP --backbone) or --data ROOT "
                         "--collection NAME")
    config = setup.config
    if events:
        model = dataclasses.replace(config.model, events=dataclasses.replace(config.model.events, enabled=True))
        config = dataclasses.replace(config, model=model)
    path = save_zero_shot_checkpoint(scratch / "zero_shot.pt", config, text_backbone=setup.text_backbone)
    return str(path), setup.backbone or backbone, setup.text_backbone


def _build(build_index: Any, checkpoint: str, corpus: Any, index_dir: str, collection: str, factory: str | None,
           batch_size: int, text_record: dict[str, Any] | None, candidates: int | None,
           moment_checkpoint: str | None, token_dtype: str, database_url: str | None, backend: str | None,
           engine: dict[str, Any], no_progress: bool, extra: dict[str, Any]) -> Any:
    return build_index(checkpoint, corpus, index_dir, collection_name=collection, factory=factory,
                         batch_size=batch_size, text_backbone=text_record,
                         n_candidates=candidates, moment_checkpoint=moment_checkpoint, token_dtype=token_dtype,
                         database_url=database_url, backend=backend,
                         engine=engine, progress=not no_progress, **extra)


def _bank_source(spec: str) -> str:
    return f"file {Path(spec).resolve()}" if Path(spec).is_file() else f"split {spec}"


def _encode_query_bank(spec: str, checkpoint: str, config: Any, root: str | None, collection: str | None,
                       text_record: dict[str, Any] | None) -> Any:
    """--query-bank: (Nb, D) query vectors of a sentence file (the index's text encoder) or of a --data split."""
    import numpy as np

    from prvr.checkpoint import load_model
    from prvr.data.preprocess import collate_queries, preprocess_query

    model, _, _ = load_model(checkpoint)
    if Path(spec).is_file():
        sentences = [line.strip() for line in Path(spec).read_text(encoding="utf-8").splitlines() if line.strip()]
        if not sentences:
            raise ValueError(f"--query-bank {spec} holds no sentences; give one query a line")
        if text_record is None or not text_record.get("path"):
            raise ValueError("--query-bank FILE is encoded with the index's text encoder, and this index has none; "
                             "add --text-backbone (or use --zero-shot --videos with a CLIP / SigLIP backbone)")
        from prvr.text_encoders import load_query_encoder

        encoder = load_query_encoder(text_record, max_tokens=config.data.max_query_tokens)
        vectors = []
        for start in range(0, len(sentences), 256):
            encoded = encoder.encode(sentences[start:start + 256])
            arrays = [preprocess_query(np.asarray(tokens, dtype=np.float32), config.data.max_query_tokens,
                                       normalize=config.data.normalize_query_tokens) for tokens in encoded.tokens]
            batch = collate_queries(arrays, [f"b{i}" for i in range(len(arrays))])
            vectors.append(model.encode_queries(batch).float().cpu().numpy())  # (b, D)
        return np.concatenate(vectors)
    if root is None or collection is None:
        raise ValueError(f"--query-bank {spec!r} is not a file, and a caption split needs --data ROOT --collection C; "
                         "give a text file of queries (one a line) or a split of the --data collection")
    from prvr.data.dataset import PRVRCorpus
    from prvr.engine import encode_corpus_queries

    corpus = PRVRCorpus(root, collection, spec, config.data)
    return encode_corpus_queries(model, corpus, batch_size=1024)[0].float().numpy()


@click.command("query")
@click.argument("text")
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Index directory written by `prvr build-index`.")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1, max=10_000))
@click.option("--candidates", default=None, type=click.IntRange(min=1), help="Videos re-ranked exactly.")
@click.option("--no-moments", is_flag=True, help="Skip moment localisation (faster; no moment model needed).")
@click.option("--moments", "num_moments", default=3, show_default=True, type=click.IntRange(min=1),
              help="Moments shown per video.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fail_cleanly
def query_command(text: str, index_dir: str, k: int, candidates: int | None, no_moments: bool, num_moments: int,
                  as_json: bool) -> None:
    """Rank the indexed videos for a sentence (with their top moments when the index has a moment model)."""
    from prvr.retriever import Retriever

    if not text.strip():
        raise ValueError("the query is empty; give a sentence such as \"a man is playing a guitar\"")
    with Retriever.load(index_dir) as retriever:
        results = retriever.search(text, k=k, n_candidates=candidates, localize=not no_moments,
                                   num_moments=num_moments)
        show_moments = retriever.has_localizer and not no_moments
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in results]))
        return
    header = f"{'rank':>4}  {'score':>7}  {'video':<24}" + ("  moments (start-end s, score)" if show_moments else "")
    click.echo(header.rstrip())
    for rank, result in enumerate(results, start=1):
        line = f"{rank:>4}  {result.score:>7.4f}  {result.video_id:<24}"
        if show_moments:
            spans = ", ".join(f"{m.start_sec:.1f}-{m.end_sec:.1f} ({m.score:.2f})" for m in result.moments)
            line += "  " + (spans or "(no duration known)" if result.duration is None else spans or "-")
        click.echo(line.rstrip())
