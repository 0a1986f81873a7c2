"""The service's contracts, each defined once: what other parts generate or are tested against.

  errors   the error types, their HTTP statuses, gRPC codes and OpenAI shapes
  tensors  the input and output tensors of the `llm` and `llm_stream` models
  headers  the request headers the gateway sets and forwards upstream
"""
