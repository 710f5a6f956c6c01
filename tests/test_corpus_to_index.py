"""What build-index / index add open: a split read once, so never cached in RAM (a 100k build was OOM-killed)."""

from __future__ import annotations

import dataclasses

from prvr.commands.common import corpus_to_index
from prvr.config import ExperimentConfig
from prvr.data.synthetic import make_synthetic_corpus


def test_the_indexed_split_is_not_cached_in_memory(tmp_path):
    make_synthetic_corpus(tmp_path, "synth", splits={"val": 3}, seed=2)
    base = ExperimentConfig()
    config = dataclasses.replace(base, data=dataclasses.replace(base.data, video_feature="synth", text_feature="synth"))
    model = dataclasses.replace(config.model, video_dim=64, text_dim=48)
    config = dataclasses.replace(config, model=model)
    assert config.data.cache_in_memory  # the training default
    corpus, collection = corpus_to_index(config, str(tmp_path / "index"), videos=(), root=str(tmp_path),
                                         collection="synth", split="val", split_is_option=False, verb="index",
                                         backbone=None, fps=1.0, device="cpu", progress=False,
                                         match_indexed_videos=False, check_feature_backbone=False)
    assert collection == "synth" and not corpus.config.cache_in_memory
    for video_id in corpus.video_ids:
        corpus.video(video_id)
    assert not corpus._video_cache  # nothing kept after the reads


def test_build_index_from_python_keeps_no_video_in_the_corpus_cache(tmp_path):
    """The builder itself reads each video once: a caller's training-style corpus (RAM cache on) stays empty."""
    import torch

    from prvr.checkpoint import save_checkpoint
    from prvr.config import apply_overrides, load_preset
    from prvr.data.dataset import PRVRCorpus, iter_video_batches
    from prvr.index.builder import build_index
    from prvr.model import DreamPRVR

    make_synthetic_corpus(tmp_path / "data", "synth", splits={"val": 6}, seed=3)
    config = apply_overrides(load_preset("tiny"), ["data.video_feature=synth", "data.text_feature=synth"])
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, video_dim=64, text_dim=48))
    corpus = PRVRCorpus(tmp_path / "data", "synth", "val", config.data)
    assert corpus.config.cache_in_memory
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model.pt", model=DreamPRVR(config.model, seed=0), config=config, epoch=0)
    result = build_index(tmp_path / "model.pt", corpus, tmp_path / "index", collection_name="synth", batch_size=4,
                         progress=False)
    assert result.num_videos == 6
    assert not corpus._video_cache
    next(iter_video_batches(corpus, 2))  # the default read (training, evaluation) still caches
    assert len(corpus._video_cache) == 2
