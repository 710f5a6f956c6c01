"""DiffusionVMR (or MomentDiff) accuracy against DDIM steps and eta on the synthetic corpus: the toy behind the
"collapse beyond one DDIM step" diagnosis in docs/bench/moments.md.

Trains a small decoder on ``prvr.data.synthetic`` (300 train / 60 val videos, seed 3) for ``--epochs`` epochs
(skipped when ``OUT/last.pt`` exists), then prints R1@0.5 / R1@0.7 / mAP of ``OUT/last.pt`` on the val split for
steps in {1, 2, 4, 10} x eta in {0, 1}, and the mean (centre, width) of the top-scored span at 1 and 2 steps.

Usage::

    OMP_NUM_THREADS=1 python scripts/moments_steps_toy.py --out runs/toy_dvmr_a
    OMP_NUM_THREADS=1 python scripts/moments_steps_toy.py --out runs/toy_dvmr_b --set network.first_layer_residual=false
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from prvr.data.dataset import PRVRCorpus
from prvr.data.synthetic import make_synthetic_corpus
from prvr.moments.config import apply_moment_overrides, load_moment_preset
from prvr.moments.localizer import DiffusionMomentLocalizer, load_localizer
from prvr.moments.train import MomentData, evaluate_moments, frame_source, train_moments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="Run folder (trained once, then reused).")
    parser.add_argument("--data", default="runs/toy_data", help="Where the synthetic corpus is written once.")
    parser.add_argument("--preset", default="diffusionvmr_cpu")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="Extra PATH=VALUE overrides.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.data)
    if not (root / "synth").exists():
        make_synthetic_corpus(root, "synth", splits={"train": 300, "val": 60}, seed=3, frame_range=(20, 60))
    base = load_moment_preset(args.preset)
    data = dataclasses.replace(base.data, video_feature="synth", text_feature="synth", max_frames=32)
    config = apply_moment_overrides(dataclasses.replace(base, data=data), [
        "network.hidden_size=64", "network.ffn_size=128", "network.decoder_layers=3", f"train.epochs={args.epochs}",
        "train.patience=50", "loss.weights.sim_nce=0", *args.overrides])
    out = Path(args.out)
    if not (out / "last.pt").exists():
        train_moments(root, "synth", out, config, select=False, on_epoch=lambda r: print(json.dumps(r["val"])))
    trained = load_localizer(out / "last.pt")
    corpus = PRVRCorpus(root, "synth", "val", trained.config.data)
    val = MomentData(corpus, frame_source(corpus))
    for eta in (0.0, 1.0):
        localizer = DiffusionMomentLocalizer(trained.model, apply_moment_overrides(trained.config,
                                                                                   [f"inference.eta={eta}"]))
        for steps in (1, 2, 4, 10):
            metrics = evaluate_moments(localizer, val, steps=steps, num_spans=10, proposal_step=None, rescore=0.0)
            print(json.dumps({"eta": eta, "steps": steps,
                              **{k: round(metrics[k], 1) for k in ("R1@0.5", "R1@0.7", "mAP")}}))
    batch = val.batch(list(range(min(64, len(val)))))
    for steps in (1, 2):
        spans, scores, _ = trained.predict(batch.video, batch.video_mask, batch.text, batch.text_mask, num_spans=10,
                                           steps=steps, proposal_step=None, rescore=0.0)
        top = spans[torch.arange(spans.shape[0]), scores.argmax(1)]  # (B, 2)
        print(json.dumps({"steps": steps, "top_span_mean_centre_width": [round(v, 3) for v in top.mean(0).tolist()],
                          "top_p_fg_mean": round(float(scores.amax(1).mean()), 3)}))


if __name__ == "__main__":
    main()
