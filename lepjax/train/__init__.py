"""Training: `lepjax train`, the continual pre-training loop every recipe runs through."""
