"""`prvr demo`: build (first run) or reuse (later runs) the embedded demo, then answer example queries."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click

from prvr.commands.common import fail_cleanly

__all__ = ["demo_command", "WHAT_THE_DEMO_IS"]

WHAT_THE_DEMO_IS = """\
What this demo is: no video-language weights can be installed here, so the demo does not look at pixels. Its
"videos" are generated timelines of everyday events (who does what with what, where: a man walks a dog on the
beach, a woman cooks pasta in a kitchen, ...). Frame t of a video is the sentence describing the event at second t,
encoded by one real text model (paraphrase-MiniLM-L3, the "camera"), plus noise and a per-video scene vector.
Queries are a second wording of the same events, encoded by another real text model (all-MiniLM-L6), which also
encodes what you type at search time. A small DreamPRVR learns to match the two; nothing is looked up by string."""

_STAGE_TITLES = {"corpus": "generate the corpus and encode it", "model": "train the retrieval model",
                 "moments": "train the moment model", "index": "build the index"}



def _prvr_program() -> str:
    """How the user can call prvr again: ``prvr`` when it is on PATH, else the path this run was started with."""
    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    on_path = shutil.which("prvr")
    if started is None or started.name != "prvr" or (on_path and Path(on_path).resolve() == started.resolve()):
        return "prvr"
    return shlex.quote(os.path.relpath(started)) if not started.is_absolute() else shlex.quote(str(started))


def _window(start: float, end: float) -> str:
    return f"{start:.1f}-{end:.1f} s"


@click.command("demo")
@click.option("--rebuild", is_flag=True, help="Discard the cached demo of these settings and build it again.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="Cache root (default: $PRVR_CACHE, else $XDG_CACHE_HOME/prvr, else ~/.cache/prvr).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the corpus, the training and the index.")
@click.option("--videos", default=None, type=click.IntRange(min=20),
              help="Videos in the generated corpus (default 600: a first run of a few minutes on 2 cores).")
@click.option("--epochs", default=None, type=click.IntRange(min=1),
              help="Most training epochs (default 8; early stopping on val).")
@click.option("-k", "k", default=3, show_default=True, type=click.IntRange(min=1, max=20),
              help="Results shown per example query.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
@fail_cleanly
def demo_command(rebuild: bool, cache_dir: str | None, seed: int, videos: int | None, epochs: int | None, k: int,
                 no_progress: bool) -> None:
    """Build the embedded demo on first run (cached), then answer example queries against its index."""
    from transformers.utils import logging as transformers_logging

    from prvr.demo.build import DemoSettings, build_demo, demo_dir, read_timelines
    from prvr.demo.examples import FREE_QUERIES, answer_examples, moment_iou, overlap_summary, pick_test_queries

    transformers_logging.disable_progress_bar()  # its per-load "Loading weights" bar is noise between the stages
    defaults = DemoSettings()
    settings = DemoSettings(seed=seed, videos=videos or defaults.videos, epochs=epochs or defaults.epochs)
    click.echo(WHAT_THE_DEMO_IS)
    click.echo(f"\ncache: {demo_dir(settings, cache_dir)}")
    began = time.perf_counter()
    stage_started: dict[str, float] = {}

    def on_stage(stage: str, status: str) -> None:
        title = _STAGE_TITLES[stage]
        if status == "reuse":
            click.echo(f"  {title}: cached")
        elif status == "build":
            stage_started[stage] = time.perf_counter()
            click.echo(f"  {title} ...")
        else:
            word = "skipped" if status == "skip" else "done"
            click.echo(f"  {title}: {word} in {time.perf_counter() - stage_started[stage]:.1f} s")

    def on_epoch(record: dict[str, Any]) -> None:
        val = record.get("val", {})
        shown = ", ".join(f"{key} {val[key]:.1f}" for key in ("SumR", "R1@0.5", "R1@0.7") if key in val)
        click.echo(f"    epoch {record['epoch']}: val {shown}")

    build = build_demo(settings, cache_root=cache_dir, rebuild=rebuild, progress=not no_progress,
                       on_stage=on_stage, on_epoch=on_epoch)
    if build.built:
        click.echo(f"built {', '.join(build.built)} in {time.perf_counter() - began:.1f} s "
                   "(later runs reuse the cache)")
    for note in build.notes:
        click.echo(f"note: {note}")
    corpus, test = build.facts["corpus"], build.facts["model"].get("test", {})
    click.echo(f"\ncorpus: {sum(corpus['videos'].values())} videos ({corpus['hours_of_video']} h), "
               f"{sum(corpus['queries'].values())} queries; the index holds all of them")
    if test:
        click.echo(f"held-out test split ({test['videos']} videos): R@1 {test['R@1']:.1f}, R@5 {test['R@5']:.1f}, "
                   f"R@10 {test['R@10']:.1f}, SumR {test['SumR']:.1f} (random ranking: SumR {test['chance_SumR']:.1f})")
    moment_facts = build.facts["moments"]
    readings = moment_facts.get("val_by_reading")
    if readings:
        chosen = moment_facts["reading"]
        click.echo(f"moment localisers on val ({readings['queries']} queries, each on its true video), R1@0.5 / R1@0.7:")
        for name, found in readings.items():
            if isinstance(found, dict):
                mark = "  <- search uses this (best on val)" if name == chosen else ""
                click.echo(f"  {name}: {found['R1@0.5']:.1f} / {found['R1@0.7']:.1f}{mark}")
        test_moments = moment_facts.get("test")
        if test_moments:
            click.echo(f"  {chosen} on the held-out test split: {test_moments['R1@0.5']:.1f} / "
                       f"{test_moments['R1@0.7']:.1f}")
    elif moment_facts.get("val"):
        moment_val = moment_facts["val"]
        click.echo(f"moment model on val: R1@0.5 {moment_val.get('R1@0.5', 0):.1f}, "
                   f"R1@0.7 {moment_val.get('R1@0.7', 0):.1f}")

    timelines = read_timelines(build.directory)
    answers = answer_examples(build.index_dir, timelines, FREE_QUERIES, pick_test_queries(timelines, seed), k=k)
    click.echo("\nexample queries (rank, video, score, predicted moment; the generated truth below each hit):")
    for answer in answers:
        click.echo(f'\n  "{answer.query}"')
        if answer.target is not None:
            video_id, window = answer.target
            found = f"it ranks {answer.target_rank} of {build.facts['index']['videos']}"
            click.echo(f"    held-out query written about {video_id} at {_window(*window)}: {found}")
        for hit in answer.hits:
            moment = f"  moment {_window(hit.moments[0].start_sec, hit.moments[0].end_sec)}" if hit.moments else ""
            mark = "  <- the video this query describes" if hit.is_target else ""
            click.echo(f"    {hit.rank}. {hit.video_id}  score {hit.score:.3f}{moment}{mark}")
            if hit.true_event is not None:
                event, iou = hit.true_event, moment_iou(hit)
                overlap = f"  (IoU with the moment {iou:.2f})" if iou is not None else ""
                click.echo(f"       true event ({hit.how}): {_window(event['start'], event['end'])} "
                           f"{event['caption']}{overlap}")
            else:
                click.echo(f"       ({hit.how})")
    overlap = overlap_summary(answers)
    if overlap["hits_with_event"]:
        click.echo(f"\n{overlap['overlapping']} of the {overlap['hits_with_event']} printed moments that have a true "
                   f"event beside them overlap it (top hits: {overlap['top_overlapping']} of "
                   f"{overlap['top_hits_with_event']})")
    index = shlex.quote(str(build.index_dir))
    click.echo(f"\nnow ask your own question:\n  {_prvr_program()} query \"someone walks a dog on the beach\" "
               f"--index {index}")
