"""The Triton side of the `llm` and `llm_stream` models: tensors in and out, error responses,
the request log line and metrics. Needs `triton_python_backend_utils`, so it is imported only
inside Triton's Python-backend stubs; the engine itself (`textgen`) never imports it."""
