"""The transformers engine: this package's own iteration-level scheduler over Hugging Face
modules or the lean Llama forward (engine loop, scheduler, sampling, incremental detokenizing)."""
