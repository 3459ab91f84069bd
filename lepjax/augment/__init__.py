"""Offline augmentation with a teacher model: FIAT chain-of-thought rationales and instruction
synthesis (Instruction Pre-Training), written as ArrayRecord shards for `lepjax train`."""
