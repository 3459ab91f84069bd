"""Evaluation: bits per byte comparable across tokenizers, tokenizer efficiency, prompt tasks
(multiple choice by log-likelihood, generation by EM / F1 / ROUGE-L / chrF) and decoding speedup,
reported by `lepjax eval` (`lepjax.eval.evaluate.evaluate`)."""
