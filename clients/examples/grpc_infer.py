#!/usr/bin/env python3
"""tritonclient.grpc through the gateway (same port as HTTP): one prompt, sampled.

  LLM_API_KEY=llmk_... python clients/examples/grpc_infer.py [host:port]

gRPC metadata keys must be lower-case: use `x-api-key`, not `X-API-Key`.
"""

import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype


def tensor(name: str, value: object, dtype: type) -> grpcclient.InferInput:
    array = np.array([[value]], dtype=dtype)
    t = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    t.set_data_from_numpy(array)
    return t


client = grpcclient.InferenceServerClient(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8080")
result = client.infer(
    "llm",
    [tensor("text_input", b"A function is", object), tensor("max_tokens", 32, np.int32),
     tensor("temperature", 0.7, np.float32), tensor("seed", 7, np.uint64)],
    headers={"x-api-key": os.environ["LLM_API_KEY"]},
)
print(result.as_numpy("text_output")[0][0].decode())
