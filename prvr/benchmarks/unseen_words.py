"""The unseen-words split of ANet-CapProxy: DEV-VAL queries with a content word that no DEV-TRAIN sentence has.

The rule (../shared/spec/data_synthesis.md): a content word is a lowercase alphabetic token of length >= 3 that is
not in :data:`STOPWORDS` (a plain English list, NLTK's, fixed here so that every build gives the same split); a
query is "unseen" when one of its content words occurs in no DEV-TRAIN sentence, val_1 (the timelines) or val_2
(the queries). The split is the novel-semantics test set of the FVE idea; it is stored as a list of cap ids beside
the split's caption file (``prvr.data.subsets``), so that it is scored against the WHOLE DEV-VAL corpus.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from prvr.types import QueryRecord

__all__ = ["STOPWORDS", "MIN_WORD_LENGTH", "UNSEEN_WORDS_SUBSET", "content_words", "vocabulary", "unseen_words",
           "unseen_word_queries", "build_unseen_words_subset"]

UNSEEN_WORDS_SUBSET = "unseen_words"
MIN_WORD_LENGTH = 3
_TOKEN = re.compile(r"[a-z]+")

# NLTK's English stopword list (179 words), without the apostrophe forms (they never survive the tokeniser).
STOPWORDS: frozenset[str] = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself it
its itself they them their theirs themselves what which who whom this that these those am is are was were be been
being have has had having do does did doing a an the and but if or because as until while of at by for with about
against between into through during before after above below to from up down in out on off over under again further
then once here there when where why how all any both each few more most other some such no nor not only own same so
than too very s t can will just don should now d ll m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma
mightn mustn needn shan shouldn wasn weren won wouldn
""".split())


def content_words(text: str) -> set[str]:
    """The content words of a sentence: lowercase alphabetic runs of >= 3 letters, not stopwords.

    >>> sorted(content_words("A man's dog runs, then the 2 dogs jump."))
    ['dog', 'dogs', 'jump', 'man', 'runs']
    """
    return {w for w in _TOKEN.findall(text.lower()) if len(w) >= MIN_WORD_LENGTH and w not in STOPWORDS}


def vocabulary(sentences: Iterable[str]) -> set[str]:
    """Every content word of the sentences."""
    words: set[str] = set()
    for sentence in sentences:
        words |= content_words(sentence)
    return words


def unseen_words(text: str, known: set[str]) -> list[str]:
    """The content words of ``text`` not in ``known``, sorted."""
    return sorted(content_words(text) - known)


def unseen_word_queries(queries: Sequence[QueryRecord], train_sentences: Iterable[str]) -> list[QueryRecord]:
    """The queries (in their order) with at least one content word that no training sentence has.

    Args:
        queries: DEV-VAL's queries.
        train_sentences: every DEV-TRAIN sentence, val_1 and val_2.

    Returns:
        The unseen-words subset.
    """
    known = vocabulary(train_sentences)
    return [query for query in queries if unseen_words(query.text, known)]


def build_unseen_words_subset(
    root: str | os.PathLike[str],
    *,
    val1_path: str | os.PathLike[str],
    val2_path: str | os.PathLike[str],
    collection: str = "capproxy",
    train_split: str = "train",
    split: str = "val",
) -> dict[str, Any]:
    """Write the unseen-words subset of a DEV build's ``split`` (:func:`prvr.data.subsets.write_query_subset`).

    The DEV-TRAIN sentences are read from the annotation files (val_1's timelines are not stored in the build),
    paired and split exactly as the build pairs and splits them; the queries are the build's caption file.

    Returns:
        ``{"path", "queries", "unseen", "train_sentences", "train_vocabulary"}``.
    """
    from prvr.benchmarks.capproxy_dataset import read_capproxy_inputs
    from prvr.data.captions import caption_path, read_captions
    from prvr.data.subsets import write_query_subset

    videos, queries, _ = read_capproxy_inputs(val1_path, val2_path, "dev")
    train_videos = {video.video_id for video in videos if video.split == train_split}
    if not train_videos:
        raise ValueError(f"{val1_path} / {val2_path}: no video falls into split {train_split!r}")
    sentences = [text for video in videos if video.video_id in train_videos for text in video.sentences]
    sentences += [query.text for query in queries if query.video_id in train_videos]
    records = read_captions(caption_path(root, collection, split))
    leaked = sorted({record.video_id for record in records} & train_videos)
    if leaked:
        raise ValueError(f"split {split!r} of {collection!r} shares {len(leaked)} videos with {train_split!r}, "
                         f"e.g. {leaked[:3]}: build it with the DEV split rule")
    unseen = unseen_word_queries(records, sentences)
    path = write_query_subset(root, collection, split, UNSEEN_WORDS_SUBSET, [q.query_id for q in unseen])
    return {"path": str(path), "queries": len(records), "unseen": len(unseen), "train_sentences": len(sentences),
            "train_vocabulary": len(vocabulary(sentences))}
