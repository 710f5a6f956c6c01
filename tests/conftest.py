"""Session fixtures shared by the test modules: built once per test session, in ``tmp_path_factory`` folders,
from fixed seeds.

* ``synthetic_corpus``: the synthetic PRVR corpus (seed 7; val 12 videos, test 4; 20-30 frames; 48-d text).
* ``tiny_checkpoint``: a random tiny DreamPRVR (torch seed 0) sized for that corpus, saved as ``model.pt``.
* ``tiny_index``: an index of the corpus' val split built from the checkpoint (no text backbone recorded).
* ``service_index``: the same index with the query BERT recorded as its text backbone and three media rows
  (one local file, one missing file, one video registered but not indexed), what the web service serves.
* ``copy_index``: (function scope) copies a shared index into ``tmp_path``; a test that adds, removes or rewrites
  anything in an index must work on a copy.
* ``query_bert``: the tiny 48-d BERT (+ tokenizer) of the synthetic queries' vocabulary.
* ``tiny_bert``: a tiny 16-d BERT (+ tokenizer) in a folder named ``tiny-bert``, for the backbone tests.
* ``tiny_clip``: a tiny random CLIP (+ image processor config) in a folder named ``tiny-clip``.
* ``localizer_module``: the importable moment-localiser plugin ``cosine_span_localizer`` (the cosine-span
  localiser of :mod:`helpers`), on ``sys.path`` for the session.

Plain helpers and constants are in ``helpers.py``; the slow exact references in ``reference.py``.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import helpers

@dataclass(frozen=True)
class SyntheticCorpus:
    """The shared synthetic corpus: its data root (collection ``synth``), the tiny experiment config sized for
    it, and the val split (the indexed one) loaded."""

    root: Path
    config: Any  # ExperimentConfig
    val: Any  # PRVRCorpus

    def split(self, name: str):
        """Another split (``test``: 4 videos) as a PRVRCorpus."""
        from prvr.data.dataset import PRVRCorpus

        return PRVRCorpus(self.root, "synth", name, self.config.data)


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCorpus:
    """Seed 7, val 12 videos + test 4, 20-30 frames, text width :data:`helpers.TEXT_DIM` (a split's videos do not
    depend on the other splits' sizes)."""
    from prvr.data.dataset import PRVRCorpus
    from prvr.data.synthetic import make_synthetic_corpus
    from prvr.engine import config_for_corpus

    root = tmp_path_factory.mktemp("synthetic") / "data"
    make_synthetic_corpus(root, "synth", splits={"val": 12, "test": 4}, seed=7, text_dim=helpers.TEXT_DIM,
                          frame_range=(20, 30))
    config = helpers.tiny_experiment_config()
    val = PRVRCorpus(root, "synth", "val", config.data)
    return SyntheticCorpus(root, config_for_corpus(config, val), val)


@pytest.fixture(scope="session")
def tiny_checkpoint(synthetic_corpus: SyntheticCorpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random (untrained, torch seed 0) tiny DreamPRVR for the synthetic corpus, saved with its config."""
    from prvr.checkpoint import save_checkpoint
    from prvr.model import DreamPRVR

    path = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    torch.manual_seed(0)
    save_checkpoint(path, model=DreamPRVR(synthetic_corpus.config.model), config=synthetic_corpus.config, epoch=0)
    return path


@pytest.fixture(scope="session")
def query_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny query BERT: vocabulary :data:`helpers.WORDS`, width :data:`helpers.TEXT_DIM`, torch seed 0."""
    return helpers.save_query_bert(tmp_path_factory.mktemp("query-bert") / "bert")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 16-d BERT over :data:`helpers.BACKBONE_WORDS` (torch seed 0) in a folder named ``tiny-bert``."""
    return helpers.save_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP (torch seed 0, 12-d projection, 32-px images) in a folder named ``tiny-clip``."""
    return helpers.save_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_index(synthetic_corpus: SyntheticCorpus, tiny_checkpoint: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The index directory of the synthetic val split (12 videos); no text backbone in its manifest. Read only."""
    from prvr.index.builder import build_index

    out = tmp_path_factory.mktemp("tiny-index") / "index"
    build_index(tiny_checkpoint, synthetic_corpus.val, out, collection_name="synth", progress=False)
    return out


@pytest.fixture(scope="session")
def service_index(synthetic_corpus: SyntheticCorpus, tiny_checkpoint: Path, query_bert: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An index of the 12 val videos whose manifest names the query BERT as its text encoder, with media rows.

    Returns ``dir`` (the index), ``tmp`` (its parent), ``with_media`` (a video whose uri is a local file of
    :data:`helpers.MEDIA_BYTES`), ``missing_media`` (a video whose file is gone), ``video_file``; plus ``outsider``, a
    video registered in the catalog but in no generation. Read only (copy it with ``copy_index`` to change it).
    """
    from prvr.index.builder import build_index
    from prvr.index.layout import DB_NAME
    from prvr.index.catalog import open_database
    from prvr.text_encoders import TokenFeatureEncoder

    tmp = tmp_path_factory.mktemp("service")
    backbone = {"id": TokenFeatureEncoder(query_bert).encoder_id, "path": str(query_bert)}
    build_index(tiny_checkpoint, synthetic_corpus.val, tmp / "index", collection_name="synth",
                text_backbone=backbone, progress=False)
    video_file = tmp / "clip.mp4"
    video_file.write_bytes(helpers.MEDIA_BYTES)
    first, second = synthetic_corpus.val.video_ids[0], synthetic_corpus.val.video_ids[1]
    with open_database(tmp / "index" / DB_NAME) as db:
        db.register_videos([{"external_id": first, "uri": str(video_file)},
                            {"external_id": second, "uri": str(tmp / "missing.mp4")},
                            {"external_id": "outsider", "uri": str(video_file)}])
    return {"tmp": tmp, "dir": tmp / "index", "with_media": first, "missing_media": second,
            "video_file": video_file}


@pytest.fixture
def copy_index(tiny_index: Path, tmp_path: Path) -> Callable[..., Path]:
    """``copy_index(source=tiny_index, name="index")``: a private copy of a shared index in ``tmp_path``."""

    def copy(source: Path = tiny_index, name: str = "index") -> Path:
        target = tmp_path / name
        shutil.copytree(source, target)
        return target

    return copy


@pytest.fixture(scope="session")
def localizer_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The plugin module :data:`helpers.LOCALIZER_MODULE_NAME`, importable by name for the whole session."""
    folder = tmp_path_factory.mktemp("localizer_module")
    (folder / f"{helpers.LOCALIZER_MODULE_NAME}.py").write_text(helpers.LOCALIZER_SOURCE)
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        yield importlib.import_module(helpers.LOCALIZER_MODULE_NAME)
    finally:
        sys.path.remove(str(folder))
