"""Slow exact references that tests compare the fast paths against (house style habit 9).

Each is a plain loop over the definition (float64 Python / NumPy arithmetic), short enough to check by eye, and
independent of the vectorised library code. Test modules import this as ``reference`` (``tests/`` is put on
``sys.path`` by pytest with ``tests/conftest.py``; see ``helpers.py``).

Shape letters: Nq queries, V videos, C clips, F frames, D token width.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from prvr.index.token_store import TokenStore
    from prvr.losses import TripletNegatives
    from prvr.schedule import NoiseSchedule


def fused_scores(query: np.ndarray, clip: np.ndarray, frame: np.ndarray, mask: np.ndarray, *, clip_weight: float,
                 frame_weight: float) -> np.ndarray:
    """(Nq, V) fused cosine scores by an explicit loop over videos (float64): for each video, ``clip_weight`` x the
    best cosine over its clips + ``frame_weight`` x the best cosine over its valid frames.

    Args:
        query: (Nq, D) query vectors.
        clip: (V, C, D) clip tokens.
        frame: (V, F, D) frame tokens.
        mask: (V, F) bool, the valid frames.
    """

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    q = unit(query.astype(np.float64))
    out = np.zeros((q.shape[0], clip.shape[0]))
    for v in range(clip.shape[0]):
        clip_best = (unit(clip[v].astype(np.float64)) @ q.T).max(axis=0)  # (Nq,)
        frame_best = (unit(frame[v][mask[v]].astype(np.float64)) @ q.T).max(axis=0)  # (Nq,)
        out[:, v] = clip_weight * clip_best + frame_weight * frame_best
    return out


# --------------------------------------------------------------------------------------------------------- spans


def span_iou(a: list[float], b: list[float]) -> float:
    """IoU of two (start, end) spans: intersection over union; 0 when the union is empty."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def nms(spans: list[list[float]], scores: list[float], threshold: float) -> list[int]:
    """Greedy NMS: visit by descending score (stable), keep a span whose IoU with every kept one is <= threshold."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # Python sort is stable
    keep: list[int] = []
    for i in order:
        if all(span_iou(spans[i], spans[k]) <= threshold for k in keep):
            keep.append(i)
    return keep


# ----------------------------------------------------------------- moment metrics (written from docs/design.md §4)


def window_iou(a: list[float], b: list[float]) -> float:
    """Temporal IoU of two windows ``[start, end, ...]`` as intersection over hull (= union when they overlap)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    hull = max(a[1], b[1]) - min(a[0], b[0])
    return inter / hull if hull > 0 else 0.0


def moment_r1(preds: list[dict], gts: list[dict], threshold: float) -> float:
    """R1@IoU in percent: the top predicted window of a query hits any ground-truth window at ``threshold``."""
    by_qid = {p["qid"]: p["pred_relevant_windows"] for p in preds}
    hits = 0
    for gt in gts:
        windows = by_qid.get(gt["qid"], [])
        if windows and max(window_iou(windows[0], w) for w in gt["relevant_windows"]) >= threshold:
            hits += 1
    return 100.0 * hits / len(gts)


def moment_ap(windows: list[list[float]], gt_windows: list[list[float]], threshold: float) -> float:
    """Average precision of one query's scored windows: greedy matching by score, VOC-2011 interpolation."""
    ranked = sorted(windows, key=lambda w: -w[2])  # stable: equal scores keep their listed order
    matched = [False] * len(gt_windows)
    precisions, recalls = [], []
    tp = fp = 0
    for window in ranked:
        candidates = [(window_iou(window, g), -j) for j, g in enumerate(gt_windows) if not matched[j]]
        best = max(candidates) if candidates else None  # highest IoU, first listed on ties
        if best is not None and best[0] >= threshold:
            matched[-best[1]] = True
            tp += 1
        else:
            fp += 1
        precisions.append(tp / (tp + fp))
        recalls.append(tp / len(gt_windows))
    # VOC-2011: sum over the recall steps of (step size) x (max precision at any recall >= this recall)
    ap, previous_recall = 0.0, 0.0
    for i, recall in enumerate(recalls):
        if recall > previous_recall:
            ap += (recall - previous_recall) * max(precisions[i:])
            previous_recall = recall
    return ap


def moment_map(preds: list[dict], gts: list[dict], threshold: float, max_predictions: int = 10) -> float:
    """mAP@IoU in percent over the queries, each with its first ``max_predictions`` windows."""
    by_qid = {p["qid"]: p["pred_relevant_windows"][:max_predictions] for p in preds}
    aps = [moment_ap(by_qid.get(gt["qid"], []), gt["relevant_windows"], threshold) for gt in gts]
    return 100.0 * sum(aps) / len(aps)


def vcmr_metrics(predictions: dict, ground_truth: dict, k: int, mu: float) -> tuple[float, float, float]:
    """(VCMR, SVMR, VR) R@k in percent: a hit moment in the right video among the first k rows; among the first k
    rows of the right video; the right video among the first k distinct videos."""
    vcmr = svmr = vr = 0
    for qid, (gt_video, window) in ground_truth.items():
        rows = predictions.get(qid, [])
        vcmr += any(v == gt_video and window_iou([s, e], list(window)) >= mu for v, s, e, *_ in rows[:k])
        own = [row for row in rows if row[0] == gt_video]
        svmr += any(window_iou([s, e], list(window)) >= mu for _, s, e, *_ in own[:k])
        videos = list(dict.fromkeys(row[0] for row in rows))
        vr += gt_video in videos[:k]
    n = len(ground_truth)
    return 100 * vcmr / n, 100 * svmr / n, 100 * vr / n


# --------------------------------------------------------------------------------------------- retrieval metrics


def target_ranks(scores: torch.Tensor, target: torch.Tensor) -> list[int]:
    """Sort each row by descending score, placing the target after every video with the same score."""
    ranks = []
    for row, t in zip(scores.tolist(), target.tolist()):
        order = sorted(range(len(row)), key=lambda v: (-row[v], v == t))
        ranks.append(order.index(t) + 1)
    return ranks


# ---------------------------------------------------------------------------------------------------- similarity


def max_similarity(query, tokens, mask, normalize):
    """scores[n][b] and argmax[n][b] by plain python loops over valid tokens."""
    scores = [[0.0] * tokens.shape[0] for _ in range(query.shape[0])]
    positions = [[0] * tokens.shape[0] for _ in range(query.shape[0])]
    for n in range(query.shape[0]):
        q = query[n].tolist()
        for b in range(tokens.shape[0]):
            best, best_t = -math.inf, -1
            for t in range(tokens.shape[1]):
                if mask is not None and not bool(mask[b, t]):
                    continue
                x = tokens[b, t].tolist()
                value = sum(qi * xi for qi, xi in zip(q, x))
                if normalize:
                    value /= math.sqrt(sum(v * v for v in q)) * math.sqrt(sum(v * v for v in x))
                if value > best:
                    best, best_t = value, t
            scores[n][b] = best
            positions[n][b] = best_t
    return torch.tensor(scores, dtype=torch.float64), torch.tensor(positions)


# ------------------------------------------------------------------------------------------------------- re-rank


def stored_video_scores(query: torch.Tensor, store: TokenStore, ids: np.ndarray, *, clip_weight: float,
                        frame_weight: float) -> dict[int, list[float]]:
    """{video: [score per query]} by python loops over each stored video's valid tokens (float64): the fused score
    of :func:`fused_scores`, read back from a token store (normalised here when the store is not)."""
    q = F.normalize(query.double(), dim=-1)
    out: dict[int, list[float]] = {}
    for video in ids.tolist():
        tokens = store.get([video])
        clip = tokens.clip[0].double()
        frame = tokens.frame[0][tokens.frame_mask[0]].double()
        if not store.normalized:
            clip, frame = F.normalize(clip, dim=-1), F.normalize(frame, dim=-1)
        out[video] = [
            clip_weight * max(float(c @ q[n]) for c in clip) + frame_weight * max(float(f @ q[n]) for f in frame)
            for n in range(q.shape[0])
        ]
    return out


# ----------------------------------------------------------------------------------------- feature preprocessing


def bin_means(frames: np.ndarray, bins: int) -> np.ndarray:
    """The published PRVR rule written as a plain loop: round(linspace) boundaries, empty bin -> frame at start."""
    n = frames.shape[0]
    bounds = [min(max(int(b), 0), n) for b in np.round(np.linspace(0, n, bins + 1))]
    rows = []
    for i in range(bins):
        start, end = bounds[i], bounds[i + 1]
        if end > start:
            rows.append(frames[start:end].astype(np.float64).mean(axis=0))
        else:
            rows.append(frames[min(start, n - 1)].astype(np.float64))
    return np.stack(rows)


def l2_normalize_rows(rows: np.ndarray) -> np.ndarray:
    out = np.zeros_like(rows, dtype=np.float64)
    for i, row in enumerate(rows):
        norm = float(np.sqrt(sum(float(v) ** 2 for v in row)))
        out[i] = row / norm if norm > 0 else row
    return out


# ----------------------------------------------------------------------------------------------------- attention


def gaussian_prior(n: int, max_len: int, width: float | None) -> torch.Tensor:
    """The prior of one video, entry by entry, in float64 python arithmetic."""
    out = torch.ones(max_len, max_len, dtype=torch.float64)
    if width is None:
        return out
    sigma = max(width, 0.01) / 9.0
    for i in range(n):
        centre = i / n
        exponents = []
        for j in range(n):
            position = j / (n - 1) if n > 1 else 0.0
            exponents.append(-((position - centre) ** 2) / (2 * sigma**2))
        top = max(exponents)  # exp(e_j) / max_j exp(e_j), without the 0 / 0 of tiny widths
        for j in range(n):
            out[i, j] = math.exp(exponents[j] - top)
    return out


def register_mask(token_mask: torch.Tensor, k: int) -> torch.Tensor:
    """(B, L + k, L + k) attention mask entry by entry: token keys follow the token mask, register keys are seen
    by token rows only."""
    batch, length = token_mask.shape
    size = length + k
    out = torch.zeros(batch, size, size, dtype=torch.bool)
    for b in range(batch):
        for i in range(size):
            for j in range(size):
                if j < length:
                    out[b, i, j] = bool(token_mask[b, j])
                else:
                    out[b, i, j] = i < length  # registers are keys for token rows only
    return out


# -------------------------------------------------------------------------------------------------------- losses


def queries_of(video_index: torch.Tensor, v: int) -> list[int]:
    """The queries (rows) of video ``v``."""
    return [n for n in range(len(video_index)) if int(video_index[n]) == v]


def logsumexp(values: list[float]) -> float:
    """log(sum(exp(values))), shifted by the maximum."""
    top = max(values)
    return top + math.log(sum(math.exp(x - top) for x in values))


def infonce(scores: torch.Tensor, video_index: torch.Tensor) -> float:
    """Text-to-video InfoNCE (mean over queries) + video-to-text InfoNCE with all of a video's queries positive
    (mean over videos that have queries)."""
    s = scores.tolist()
    num_queries, num_videos = scores.shape
    t2v = [logsumexp(s[n]) - s[n][int(video_index[n])] for n in range(num_queries)]
    v2t = []
    for v in range(num_videos):
        members = queries_of(video_index, v)
        if not members:
            continue
        column = [s[n][v] for n in range(num_queries)]
        v2t.append(logsumexp(column) - logsumexp([s[n][v] for n in members]))
    return sum(t2v) / len(t2v) + sum(v2t) / len(v2t)


def triplet(scores, video_index, margin, negatives: TripletNegatives) -> float:
    """Hinge triplet loss on the drawn negatives: a negative video per query, a negative query per video column
    (against the video's mean positive score); each term averaged."""
    s = scores.tolist()
    num_queries, num_videos = scores.shape
    total = 0.0
    if negatives.video is not None:
        terms = []
        for n in range(num_queries):
            neg = int(negatives.video[n])
            terms.append(max(0.0, margin + s[n][neg] - s[n][int(video_index[n])]))
        total += sum(terms) / len(terms)
    terms = []
    for column, v in enumerate(negatives.columns.tolist()):
        members = queries_of(video_index, v)
        positive = sum(s[n][v] for n in members) / len(members)
        terms.append(max(0.0, margin + s[int(negatives.query[column])][v] - positive))
    if terms:
        total += sum(terms) / len(terms)
    return total


def cosine(a: list[float], b: list[float]) -> float:
    """Cosine of two vectors."""
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def query_diversity(query, video_index, alpha, lam, delta) -> float:
    """Query diversity loss: sum over ordered pairs of queries of one video of (1 + c)^lam softplus(alpha (c +
    delta)), c their cosine, over the number of queries."""
    q = query.tolist()
    total = 0.0
    for i in range(len(q)):
        for j in range(len(q)):
            if i != j and int(video_index[i]) == int(video_index[j]):
                c = cosine(q[i], q[j])
                total += (1.0 + c) ** lam * math.log(1.0 + math.exp(alpha * (c + delta)))
    return total / len(q)


def supcon(query, video_index, tau) -> float:
    """Supervised contrastive loss over queries, the queries of one video positive; anchors without positives skipped."""
    q = query.tolist()
    per_anchor = []
    for i in range(len(q)):
        positives = [p for p in range(len(q)) if p != i and int(video_index[p]) == int(video_index[i])]
        if not positives:
            continue
        denominator = logsumexp([cosine(q[i], q[a]) / tau for a in range(len(q)) if a != i])
        per_anchor.append(-sum(cosine(q[i], q[p]) / tau - denominator for p in positives) / len(positives))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


# ------------------------------------------------------------------------------------------------ noise schedule


def toy_ddim(schedule: NoiseSchedule, x: torch.Tensor, steps: list[int], eta: float, seed: int) -> torch.Tensor:
    """Scalar-per-step DDIM loop written from the paper's equations, for the toy network x0 = 0.5 tanh(x) + 0.1."""
    gen = torch.Generator().manual_seed(seed)
    abar = [float(np.prod(1 - schedule.betas[: i + 1])) for i in range(schedule.num_steps)]
    for index, t in enumerate(steps):
        x0_hat = (0.5 * torch.tanh(x) + 0.1).clamp(-1, 1)
        if index == len(steps) - 1:
            return x0_hat
        t_prev = steps[index + 1]
        a_t, a_p = abar[t], abar[t_prev]
        eps_hat = (x / math.sqrt(a_t) - x0_hat) / math.sqrt(1 / a_t - 1)
        sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        x = math.sqrt(a_p) * x0_hat + math.sqrt(1 - a_p - sigma**2) * eps_hat + sigma * noise
    return x
