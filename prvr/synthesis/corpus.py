"""The synthesised training collection of ANet-CapProxy: build the candidates, then write selected splits.

Shape letters: n frames of one video, S events, D feature dimension, N candidates.

:func:`synthesize_corpus` draws ``num_candidates`` (DEV-TRAIN video, event) pairs and as many new sentences from a
pool (train.json: other videos' sentences, by default only those with a content word no DEV-TRAIN sentence has),
edits each event with a :class:`~prvr.synthesis.generator.PairGenerator` and writes every candidate in the standard
PRVR layout as split ``candidates`` of its own collection, with the per-candidate scores s_c and s_u::

    <out_root>/<collection>/FeatureData/<video_feature>/feature.hdf5      the edited videos (float16)
    <out_root>/<collection>/TextData/<collection>candidates.caption.txt   syn_<source>_e<k>#enc#0 <p_e>
    <out_root>/<collection>/TextData/<collection>candidates.moments.jsonl the edited event's window
    <out_root>/<collection>/TextData/<text_feature>_<collection>_query_{feat,sent}.hdf5
    <out_root>/<collection>/TextData/<collection>candidates.scores.jsonl  one record per candidate (s_c, s_u, ...)
    <out_root>/<collection>/manifest.json                                 config, counts, checks, sha256s

Sentence encodings are cached in chunks under ``.capproxy_work/`` (as the benchmark builder does), so a restarted
build skips what it has encoded; frames are re-made from them (cheap and exact). :func:`select_split` applies a
:class:`~prvr.synthesis.selection.SelectionConfig` (computing the current model's margins when asked, cached per
checkpoint) and writes the selected split beside ``candidates`` (caption + moments files: the features are shared)
and ``<collection><split>.selection.jsonl`` with every candidate's scores and whether it was kept, so that
``prvr train --train-split <collection>:<split>`` reads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prvr.benchmarks.capproxy_dataset import (
    FEATURE_DTYPE,
    RECIPE_VERSION,
    _encode_queries,
    _encode_video_sentences,
    _get_encoder,
    _unit_rows,
    check_disjoint,
    edit_event_frames,
    frame_coverage,
    frame_count,
    make_frames,
    manifest_path,
    query_sentence_path,
    read_capproxy_inputs,
    work_dir,
)
from prvr.benchmarks.unseen_words import unseen_words, vocabulary
from prvr.data.annotations import read_activitynet_captions
from prvr.data.captions import caption_path, moments_path, read_captions, read_moments, write_captions, write_moments
from prvr.data.features import open_video_features, query_feature_path, write_hdf5_features
from prvr.fileio import file_sha256, write_json_atomic, write_text_atomic
from prvr.synthesis.generator import EditRequest, EventEditGenerator, PairGenerator
from prvr.synthesis.selection import SelectionConfig, cross_modal_relevance, model_margins, select, \
    uni_modal_structure

__all__ = ["SynthesisConfig", "CANDIDATES", "scores_path", "selection_path", "read_scores", "synthesize_corpus",
           "select_split", "load_scoring_model"]

logger = logging.getLogger(__name__)

CANDIDATES = "candidates"
POOLS = ("novel", "all")


@dataclass(frozen=True)
class SynthesisConfig:
    """What ``synthesize`` draws and how.

    Attributes:
        num_candidates: N, the candidate pairs made (each from a different (video, event) of DEV-TRAIN).
        seed: seeds the draw of events and of new sentences.
        pool: ``"novel"``: only pool sentences with a content word that no DEV-TRAIN sentence has (the spec's
            "preferring words the training set lacks"); ``"all"``: every pool sentence.
        video_feature: the camera (``minilm_l3``, the benchmark's frames).
        text_feature: the query backbone (``minilm_l6``).
        vlm_feature: the VLM of s_c (``minilm_l6`` on both sides: p_e and the moment rendered by the L6 camera).
    """

    num_candidates: int = 5000
    seed: int = 0
    pool: str = "novel"
    video_feature: str = "minilm_l3"
    text_feature: str = "minilm_l6"
    vlm_feature: str = "minilm_l6"

    def __post_init__(self) -> None:
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {self.num_candidates}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")


def scores_path(root: str | os.PathLike[str], collection: str) -> Path:
    """``<root>/<collection>/TextData/<collection>candidates.scores.jsonl``."""
    return caption_path(root, collection, CANDIDATES).with_name(f"{collection}{CANDIDATES}.scores.jsonl")


def selection_path(root: str | os.PathLike[str], collection: str, split: str) -> Path:
    """``<root>/<collection>/TextData/<collection><split>.selection.jsonl``."""
    return caption_path(root, collection, split).with_name(f"{collection}{split}.selection.jsonl")


def read_scores(root: str | os.PathLike[str], collection: str) -> list[dict[str, Any]]:
    """The per-candidate records of a synthesised collection, in caption order."""
    path = scores_path(root, collection)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build the collection with `build_capproxy.py synthesize`")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _pool_sentences(pool_path: Path, known: set[str], pool: str) -> list[tuple[str, str]]:
    """(sentence id ``<video>#<k>``, one-line sentence) of the pool file, distinct texts in file order."""
    seen: set[str] = set()
    result = []
    counter: dict[str, int] = {}
    for record in read_activitynet_captions(pool_path):
        k = counter.get(record.video_id, 0)
        counter[record.video_id] = k + 1
        text = " ".join(record.text.split())
        if not text or text in seen or (pool == "novel" and not unseen_words(text, known)):
            continue
        seen.add(text)
        result.append((f"{record.video_id}#{k}", text))
    return result


def synthesize_corpus(
    out_root: str | os.PathLike[str],
    *,
    source_root: str | os.PathLike[str],
    val1_path: str | os.PathLike[str],
    val2_path: str | os.PathLike[str],
    pool_path: str | os.PathLike[str],
    config: SynthesisConfig = SynthesisConfig(),
    collection: str = "capproxy_synth",
    source_collection: str = "capproxy",
    generator: PairGenerator | None = None,
    encoders: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    chunk_size: int = 512,
    max_query_tokens: int = 30,
    threads: int = 0,
    keep_work: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Build (or resume) the candidate pairs of a synthesised collection.

    Args:
        out_root: the data root of the new collection (never the DEV build's: it only reads that one).
        source_root: the data root of the DEV build (``<source_root>/<source_collection>/``, its camera frames).
        val1_path, val2_path: the DEV build's annotation files (the DEV-TRAIN timelines and vocabulary).
        pool_path: where the new sentences come from (train.json); it must share no video with the DEV files.
        config: sizes, seed, pool, backbones.
        collection: the new collection's name.
        source_collection: the DEV build's collection.
        generator: the pair generator (default: :class:`EventEditGenerator` over the camera's sentence vectors).
        encoders: feature name -> a loaded encoder (tests); others are loaded by name.
        batch_size, chunk_size, max_query_tokens, threads: as :func:`prvr.benchmarks.capproxy_dataset.build_capproxy`.
        keep_work: keep the encoding cache after a successful build.
        progress: tqdm bars.

    Returns:
        The manifest (also written to ``<out_root>/<collection>/manifest.json``).
    """
    began = time.perf_counter()
    out_root, source_root, pool_path = Path(out_root), Path(source_root), Path(pool_path)
    if collection == source_collection and out_root.resolve() == source_root.resolve():
        raise ValueError(f"collection {collection!r} would overwrite the DEV build; give the synthesised "
                         "collection another name or data root")
    disjoint = check_disjoint(pool_path, [val1_path, val2_path])
    videos, queries, _ = read_capproxy_inputs(val1_path, val2_path, "dev")
    sources = [video for video in videos if video.split == "train"]
    train_ids = {video.video_id for video in sources}
    known = vocabulary([t for v in sources for t in v.sentences] + [q.text for q in queries if q.video_id in train_ids])

    # The draw: N distinct (video, event) pairs whose window holds a frame centre, N distinct new sentences.
    events = [(index, k) for index, video in enumerate(sources)
              for k, covered in enumerate(frame_coverage(frame_count(video.duration), video.windows).any(axis=0))
              if covered]
    pool = _pool_sentences(pool_path, known, config.pool)
    if config.num_candidates > min(len(events), len(pool)):
        raise ValueError(f"num_candidates={config.num_candidates} is more than the {len(events)} editable DEV-TRAIN "
                         f"events or the {len(pool)} pool sentences ({config.pool!r}); ask for fewer")
    rng = np.random.default_rng(config.seed)
    chosen = sorted(rng.choice(len(events), size=config.num_candidates, replace=False).tolist())
    prompts = [pool[i] for i in rng.choice(len(pool), size=config.num_candidates, replace=False).tolist()]
    requests = [EditRequest(sources[events[c][0]], events[c][1], text, sentence_id)
                for c, (sentence_id, text) in zip(chosen, prompts)]

    base = out_root / collection
    work = work_dir(out_root, collection)
    for folder in (base / "TextData", base / "FeatureData" / config.video_feature, work):
        folder.mkdir(parents=True, exist_ok=True)
    loaded: dict[str, Any] = {}
    supplied = dict(encoders or {})
    timings: dict[str, float] = {}

    def encoder(name: str) -> Any:
        return _get_encoder(name, loaded, supplied, batch_size, max_query_tokens, threads)

    used_videos = list(dict.fromkeys(request.source.video_id for request in requests))
    by_id = {video.video_id: video for video in sources}
    source_texts = list(dict.fromkeys(t for vid in used_videos for t in by_id[vid].sentences))
    prompt_texts = [request.sentence for request in requests]
    tic = time.perf_counter()
    camera_texts = list(dict.fromkeys(source_texts + prompt_texts))
    camera_vectors = _unit_rows(_encode_video_sentences(encoder(config.video_feature), camera_texts,
                                                        work / f"video-{config.video_feature}", chunk_size, progress,
                                                        f"camera {config.video_feature}"))  # (T, D)
    camera = dict(zip(camera_texts, camera_vectors))
    timings[f"encode_camera_{config.video_feature}_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    tokens, prompt_vectors = _encode_queries(encoder(config.text_feature), prompt_texts,
                                             work / f"query-{config.text_feature}", chunk_size, progress,
                                             f"queries {config.text_feature}")  # N (L_i, D), (N, D)
    timings[f"encode_queries_{config.text_feature}_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    if config.vlm_feature == config.text_feature:
        vlm_prompts = prompt_vectors
    else:
        vlm_prompts = _encode_video_sentences(encoder(config.vlm_feature), prompt_texts,
                                              work / f"vlm-prompt-{config.vlm_feature}", chunk_size, progress,
                                              f"VLM prompts {config.vlm_feature}")
    vlm_vectors = _unit_rows(_encode_video_sentences(encoder(config.vlm_feature), source_texts,
                                                     work / f"vlm-{config.vlm_feature}", chunk_size, progress,
                                                     f"VLM sources {config.vlm_feature}"))  # (S_used, D)
    vlm = dict(zip(source_texts, vlm_vectors))
    timings[f"encode_vlm_{config.vlm_feature}_s"] = time.perf_counter() - tic

    generator = generator if generator is not None else EventEditGenerator(camera)
    records: list[dict[str, Any]] = []
    recipe_diff = 0.0

    def frame_items() -> Iterator[tuple[str, np.ndarray]]:
        nonlocal recipe_diff
        with open_video_features(source_root, source_collection, config.video_feature) as store:
            for request, prompt_vlm in zip(requests, vlm_prompts):
                source = request.source
                stored = store[source.video_id]  # (n, D) the benchmark's frames of the source
                remade = make_frames(source.video_id, source.duration, source.windows,
                                     np.stack([camera[t] for t in source.sentences])).astype(stored.dtype)
                recipe_diff = max(recipe_diff, float(np.abs(remade.astype(np.float64) - stored).max()))
                pair = generator.generate(request, stored)
                vlm_frames, _ = edit_event_frames(source.video_id, source.duration, source.windows,
                                                  np.stack([vlm[t] for t in source.sentences]), request.event,
                                                  _unit_rows(prompt_vlm[None, :])[0])  # (n, D) the L6 camera
                records.append({
                    "cap_id": pair.query.query_id, "video_id": pair.video_id, "source_video": source.video_id,
                    "event": request.event, "source_sentence": source.sentences[request.event],
                    "sentence": request.sentence, "sentence_id": request.sentence_id,
                    "novel_words": unseen_words(request.sentence, known),
                    "moment": list(pair.query.windows[0]), "window": list(source.windows[request.event]),
                    "duration": source.duration,
                    "frames": int(pair.span.shape[0]), "span_frames": int(pair.span.sum()),
                    "edit_share": float(pair.span.mean()),
                    "s_c": cross_modal_relevance(prompt_vlm, vlm_frames, pair.span),
                    "s_u": uni_modal_structure(stored, pair.frames, pair.span),
                    "_query": pair.query,
                })
                yield pair.video_id, pair.frames

    tic = time.perf_counter()
    feature_file = base / "FeatureData" / config.video_feature / "feature.hdf5"
    write_hdf5_features(feature_file, frame_items(), FEATURE_DTYPE,
                        {"recipe": RECIPE_VERSION, "generator": generator.generator_id,
                         "source_collection": source_collection})
    timings["frames_s"] = time.perf_counter() - tic
    if recipe_diff > 1e-2:
        raise ValueError(f"the source frames of {source_root / source_collection} differ from the recipe by up to "
                         f"{recipe_diff:.3g}: they were not built with this camera ({config.video_feature}); rebuild "
                         "the DEV collection or pass its own backbone")
    pair_queries = [record.pop("_query") for record in records]
    outputs = [feature_file]
    text_attrs = {"recipe": RECIPE_VERSION, "text_encoder": encoder(config.text_feature).encoder_id,
                  "source_sha256": file_sha256(pool_path)}
    outputs.append(write_hdf5_features(query_feature_path(out_root, collection, config.text_feature),
                                       ((q.query_id, t) for q, t in zip(pair_queries, tokens)), FEATURE_DTYPE,
                                       {**text_attrs, "max_tokens": max_query_tokens}))
    outputs.append(write_hdf5_features(query_sentence_path(out_root, collection, config.text_feature),
                                       ((q.query_id, v[None, :]) for q, v in zip(pair_queries, prompt_vectors)),
                                       np.float32, {**text_attrs, "pooling": "masked mean over the whole sentence"}))
    write_captions(caption_path(out_root, collection, CANDIDATES), pair_queries)
    write_moments(moments_path(out_root, collection, CANDIDATES), pair_queries)
    write_text_atomic(scores_path(out_root, collection), "".join(json.dumps(r) + "\n" for r in records))
    outputs += [caption_path(out_root, collection, CANDIDATES), moments_path(out_root, collection, CANDIDATES),
                scores_path(out_root, collection)]

    def summary(key: str) -> dict[str, float]:
        values = np.asarray([r[key] for r in records], dtype=np.float64)
        return {"mean": float(values.mean()), "min": float(values.min()), "median": float(np.median(values)),
                "max": float(values.max())}

    timings["total_s"] = time.perf_counter() - began
    manifest: dict[str, Any] = {
        "benchmark": "ANet-CapProxy synthesised pairs (FVE event edit)",
        "collection": collection,
        "config": dataclasses.asdict(config),
        "generator": generator.generator_id,
        "source": {"root": str(source_root), "collection": source_collection,
                   "recipe_max_abs_diff": recipe_diff},
        "inputs": {name: {"file": Path(p).name, "sha256": file_sha256(Path(p))}
                   for name, p in (("val_1", val1_path), ("val_2", val2_path), ("pool", pool_path))},
        "disjoint_from_dev": disjoint,
        "encoders": {name: enc.encoder_id for name, enc in loaded.items()},
        "video_features": [config.video_feature],
        "text_feature": config.text_feature,
        "counts": {"candidates": len(records), "source_videos": len(used_videos), "editable_events": len(events),
                   "pool_sentences": len(pool), "dev_train_vocabulary": len(known),
                   "splits": {CANDIDATES: {"videos": len(records), "queries": len(records)}}},
        "scores": {"s_c": summary("s_c"), "s_u": summary("s_u"), "edit_share": summary("edit_share")},
        "selections": {},
        "outputs": {str(path.relative_to(base)): file_sha256(path) for path in outputs},
        "build": {"wall_time_s": {k: round(v, 2) for k, v in timings.items()}},
    }
    write_json_atomic(manifest_path(out_root, collection), manifest)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("synthesised %d candidates into %s in %.1f s", len(records), base, timings["total_s"])
    return manifest


def load_scoring_model(path: str | os.PathLike[str], video_feature: str, text_feature: str) -> tuple[Any, Any]:
    """The "current model" of model-performance selection: a DreamPRVR checkpoint or a trivial run's best.pt.

    Returns:
        (model in eval mode, the DataConfig to read the candidates with).
    """
    import torch

    from prvr.config import DataConfig

    payload = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(payload, dict) and "trivial" in payload:
        from prvr.benchmarks.trivial import TrivialConfig, TrivialPRVR

        model = TrivialPRVR(payload["video_dim"], payload["text_dim"], TrivialConfig(**payload["trivial"]))
        model.load_state_dict(payload["model"])
        return model.eval(), DataConfig(video_feature=video_feature, text_feature=text_feature)
    from prvr.checkpoint import load_model

    model, experiment, _ = load_model(path)
    return model, dataclasses.replace(experiment.data, video_feature=video_feature, text_feature=text_feature)


def select_split(
    root: str | os.PathLike[str],
    config: SelectionConfig,
    *,
    collection: str = "capproxy_synth",
    split: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Select candidates and write them as split ``split`` (default ``sel_<config.name>``) of the collection.

    Args:
        root: the data root of the synthesised collection.
        config: the signals, thresholds and budget.
        collection: the synthesised collection.
        split: the new split's name.
        checkpoint: the current model (needed when ``config.model``): its margins over the candidates are computed
            once and cached per checkpoint digest.

    Returns:
        The selection's summary (also recorded in the collection manifest under ``selections``).
    """
    split = split or "sel_" + config.name.replace("+", "_")
    if split == CANDIDATES:
        raise ValueError(f"split {split!r} is the candidates' own; name the selection another way")
    manifest = json.loads(manifest_path(root, collection).read_text(encoding="utf-8"))
    records = read_scores(root, collection)
    checkpoint_digest = None
    if config.model:
        if checkpoint is None:
            raise ValueError("model-performance selection needs --checkpoint (the current model, e.g. the trivial "
                             "DEV-TRAIN run's best.pt)")
        checkpoint_digest = file_sha256(Path(checkpoint))
        margins_file = work_dir(root, collection) / f"margins-{checkpoint_digest[:16]}.npz"
        if margins_file.is_file():
            with np.load(margins_file) as stored:
                margins, ranks = stored["margins"], stored["ranks"]
        else:
            from prvr.data.dataset import PRVRCorpus

            model, data = load_scoring_model(checkpoint, manifest["video_features"][0], manifest["text_feature"])
            corpus = PRVRCorpus(root, collection, CANDIDATES, data)
            if [q.query_id for q in corpus.queries] != [r["cap_id"] for r in records]:
                raise ValueError(f"the scores file of {collection!r} does not match its caption file; rebuild it")
            margins, ranks = model_margins(model, corpus)
            margins_file.parent.mkdir(parents=True, exist_ok=True)
            np.savez(margins_file, margins=margins, ranks=ranks)
        for record, margin, rank in zip(records, margins, ranks):
            record["margin"], record["rank"] = float(margin), int(rank)
    kept = select(records, config)
    chosen = set(kept)
    rows = []
    for index, record in enumerate(records):
        row = {key: record[key] for key in ("cap_id", "video_id", "s_c", "s_u", "edit_share", "margin", "rank")
               if key in record}
        row["selected"] = index in chosen
        rows.append(row)
    write_text_atomic(selection_path(root, collection, split), "".join(json.dumps(r) + "\n" for r in rows))
    by_id = {q.query_id: q for q in read_captions(caption_path(root, collection, CANDIDATES))}
    moments = read_moments(moments_path(root, collection, CANDIDATES))
    selected = []
    for index in kept:
        cap_id = records[index]["cap_id"]
        windows, duration = moments[cap_id]
        selected.append(dataclasses.replace(by_id[cap_id], windows=tuple(windows), duration=duration))
    write_captions(caption_path(root, collection, split), selected)
    write_moments(moments_path(root, collection, split), selected)
    chosen_records = [records[i] for i in kept]
    summary = {
        "split": split, "config": dataclasses.asdict(config), "name": config.name,
        "checkpoint": {"path": str(checkpoint), "sha256": checkpoint_digest} if checkpoint_digest else None,
        "candidates": len(records), "selected": len(kept),
        "passing_filters": sum(1 for r in records
                               if (not config.cross_modal or r["s_c"] >= config.min_cross_modal)
                               and (not config.structure or r["s_u"] >= config.min_structure)),
        "selected_mean": {key: float(np.mean([r[key] for r in chosen_records]))
                          for key in ("s_c", "s_u", "edit_share", "margin") if chosen_records and key in records[0]},
        "selected_with_novel_words": sum(1 for r in chosen_records if r["novel_words"]),
        "selection_file": selection_path(root, collection, split).name,
        "selection_sha256": hashlib.sha256(json.dumps(kept).encode()).hexdigest(),
    }
    manifest.setdefault("selections", {})[split] = summary
    manifest["counts"]["splits"][split] = {"videos": len(kept), "queries": len(kept)}
    write_json_atomic(manifest_path(root, collection), manifest)
    return summary
