"""From raw video files to per-video feature arrays: decoding, frame backbones, the feature cache, extraction."""
