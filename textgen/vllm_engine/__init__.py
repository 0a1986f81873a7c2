"""The vLLM engine: vLLM's engine core (scheduler, paged KV cache, model runner) driven in
this process, behind the same interface as the transformers engine."""
