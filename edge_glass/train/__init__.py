"""The one training loop align and decode share: loop, checkpoints, distributed helpers."""
