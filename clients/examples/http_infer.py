#!/usr/bin/env python3
"""tritonclient.http through the gateway: one prompt, greedy, 32 new tokens.

  LLM_API_KEY=llmk_... python clients/examples/http_infer.py [host:port]
"""

import os
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype


def tensor(name: str, value: object, dtype: type) -> httpclient.InferInput:
    array = np.array([[value]], dtype=dtype)  # [batch, 1]: the model batches requests
    t = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    t.set_data_from_numpy(array)
    return t


client = httpclient.InferenceServerClient(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8080")
result = client.infer(
    "llm",
    [tensor("text_input", b"The list", object), tensor("max_tokens", 32, np.int32),
     tensor("exclude_input_in_output", True, np.bool_)],
    headers={"X-API-Key": os.environ["LLM_API_KEY"]},
)
print(result.as_numpy("text_output")[0][0].decode())
print("finish_reason:", result.as_numpy("finish_reason")[0][0].decode(),
      "tokens:", int(result.as_numpy("num_output_tokens")[0][0]))
