"""The Triton side of the `llm` and `llm_stream` models.

  triton_io.py      tensors in and out, error responses, the request log line
  metrics.py        the engine's figures as Triton custom metrics
  link.py           the engine link: `llm_stream`'s requests to the engine in `llm`'s process
  link_messages.py  what travels over the link

triton_io and metrics need Triton's `triton_python_backend_utils`, so only the stubs import
them; the link needs nothing of Triton, and its tests drive it without Triton."""
