"""Executors: run a batch of sequences through the model, one forward per engine step (the HF
module, the lean Llama-family forward, its KV batch and the native kernel)."""
