"""The error contract of the service's routes: the one definition, imported as `contracts.errors`.

Every error answer on those routes, whoever made it (Envoy, Triton or the model), is

    {"error": "<message> (request id <id>)", "code": <HTTP status>, "type": "<type>",
     "request_id": "<id>"}

Why `error` is a string: Triton's protocol has it so, and Triton's own clients
(`tritonclient.http`, `perf_analyzer`) read it as one; the structured fields stand beside it.
The request id is inside the message too, so `print(exc)` in a client shows it.
gRPC callers get the status code of `GRPC_STATUS` and the same message as `grpc-message`.

Who reads this module:
  * gateway/render.py: Envoy's local-reply bodies (`LOCAL_REPLIES`) and the Lua table by
    which gateway/error_contract.lua gives Triton's errors a type and a status (`STATUS`);
  * the Triton models (triton_llm/): they set the types of `MODEL_ERRORS`, written by
    `wire_message` (below);
  * openai_frontend/errors.py: the OpenAI shape of the same types (`OPENAI`);
  * gateway/openapi.yaml documents `ErrorType` (a unit test checks it).
"""

from __future__ import annotations

from enum import Enum


class ErrorType(str, Enum):
    """The `type` of an error answer: what went wrong, stable across releases."""

    INVALID_REQUEST = "invalid_request"      # the client's request is wrong: fix it
    UNAUTHENTICATED = "unauthenticated"      # no API key
    FORBIDDEN = "forbidden"                  # an unknown or revoked API key
    NOT_FOUND = "not_found"                  # no such route, model or version
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"      # the request did not arrive in time
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UPGRADE_REQUIRED = "upgrade_required"    # HTTP/1.0
    RATE_LIMITED = "rate_limited"            # the key's bucket is empty: retry after a while
    HEADERS_TOO_LARGE = "headers_too_large"
    INTERNAL = "internal"                    # a fault on the server's side
    BAD_GATEWAY = "bad_gateway"              # Triton closed the connection
    OVERLOADED = "overloaded"                # the model's queue is full or the wait too long
    UNAVAILABLE = "unavailable"              # draining, restarting or unreachable
    TIMEOUT = "timeout"                      # Triton did not answer in time


# The HTTP status of each type. 429 and 503 answers also carry `Retry-After`.
STATUS: dict[ErrorType, int] = {
    ErrorType.INVALID_REQUEST: 400,
    ErrorType.UNAUTHENTICATED: 401,
    ErrorType.FORBIDDEN: 403,
    ErrorType.NOT_FOUND: 404,
    ErrorType.METHOD_NOT_ALLOWED: 405,
    ErrorType.REQUEST_TIMEOUT: 408,
    ErrorType.PAYLOAD_TOO_LARGE: 413,
    ErrorType.UPGRADE_REQUIRED: 426,
    ErrorType.RATE_LIMITED: 429,
    ErrorType.HEADERS_TOO_LARGE: 431,
    ErrorType.INTERNAL: 500,
    ErrorType.BAD_GATEWAY: 502,
    ErrorType.OVERLOADED: 503,
    ErrorType.UNAVAILABLE: 503,
    ErrorType.TIMEOUT: 504,
}

# The type of an error that names none (Triton's own errors), by its HTTP status.
TYPE_OF_STATUS: dict[int, ErrorType] = {
    400: ErrorType.INVALID_REQUEST, 401: ErrorType.UNAUTHENTICATED, 403: ErrorType.FORBIDDEN,
    404: ErrorType.NOT_FOUND, 405: ErrorType.METHOD_NOT_ALLOWED,
    408: ErrorType.REQUEST_TIMEOUT, 413: ErrorType.PAYLOAD_TOO_LARGE,
    426: ErrorType.UPGRADE_REQUIRED, 429: ErrorType.RATE_LIMITED,
    431: ErrorType.HEADERS_TOO_LARGE, 500: ErrorType.INTERNAL, 502: ErrorType.BAD_GATEWAY,
    503: ErrorType.UNAVAILABLE, 504: ErrorType.TIMEOUT,
}

# Status codes Envoy answers itself, the status the client gets and a message where Envoy's
# own text is not meant for API clients (None keeps the text of the filter that answered).
LOCAL_REPLIES: dict[int, tuple[int, str | None]] = {
    400: (400, None),
    401: (401, None),
    403: (403, None),
    404: (404, None),
    408: (408, "the request headers or body did not arrive in time"),
    413: (413, "the request body is larger than this gateway accepts"),
    426: (426, "HTTP/1.0 is not supported; use HTTP/1.1 or HTTP/2"),
    429: (429, "rate limit exceeded for this API key; retry after `Retry-After` seconds"),
    431: (431, "the request headers are larger than this gateway accepts"),
    # Envoy's HTTP/1 codec answers 501 for a Transfer-Encoding it does not implement: the
    # client's mistake, so it goes out as a 400.
    501: (400, "unsupported Transfer-Encoding; send chunked or a Content-Length"),
    502: (502, "the model server closed the connection"),
    503: (503, "the model server is unavailable, overloaded or restarting; retry after "
               "`Retry-After` seconds"),
    504: (504, "the model server did not answer in time"),
}

# Envoy answers 503 when the connection to a replica broke after the request was sent
# (response flags UC, UR): the replica died mid-generation. The gateway does not retry that
# (work had started there) and says so with a 502 of its own, so a 503 from this service
# always means "refused before any work: retrying is safe" (what the gateway's own retries
# rely on, gateway/render.py).
REPLICA_FAILED_FLAGS = ("UC", "UR")
REPLICA_FAILED: tuple[int, str] = (
    502, "the model replica serving this request failed while generating; it was not retried "
         "because its work had started (another replica takes new requests: retry it)")

# gRPC status codes (numbers, as in `grpc-status`) of the types the model sets, which the
# gateway applies to the model's errors on gRPC calls. (Envoy's own replies to gRPC calls get
# their code from Envoy's HTTP-to-gRPC mapping: 401 UNAUTHENTICATED, 429 RESOURCE_EXHAUSTED...)
GRPC_STATUS: dict[ErrorType, int] = {
    ErrorType.INVALID_REQUEST: 3,    # INVALID_ARGUMENT
    ErrorType.FORBIDDEN: 7,          # PERMISSION_DENIED (an adapter command, not admin tier)
    ErrorType.NOT_FOUND: 5,          # NOT_FOUND (an adapter the replica does not serve)
    ErrorType.INTERNAL: 13,          # INTERNAL
    ErrorType.OVERLOADED: 14,        # UNAVAILABLE
    ErrorType.UNAVAILABLE: 14,       # UNAVAILABLE
}


def error_text(message: str, request_id: str) -> str:
    """The `error` string: the message, then the request id a support ticket needs."""
    return f"{message} (request id {request_id})"


# The OpenAI-compatible routes (/v1/...) answer in OpenAI's own shape,
#   {"error": {"message": "...", "type": "<OpenAI type>", "param": <name or null>,
#              "code": "<ErrorType>"}},
# with statuses the `openai` SDKs turn into their exception classes. A full queue is a 429
# there (the SDKs retry a RateLimitError), as OpenAI and vLLM answer it.
OPENAI: dict[ErrorType, tuple[int, str]] = {
    ErrorType.INVALID_REQUEST: (400, "invalid_request_error"),
    ErrorType.UNAUTHENTICATED: (401, "authentication_error"),
    ErrorType.FORBIDDEN: (403, "permission_error"),
    ErrorType.NOT_FOUND: (404, "not_found_error"),
    ErrorType.METHOD_NOT_ALLOWED: (405, "invalid_request_error"),
    ErrorType.REQUEST_TIMEOUT: (408, "invalid_request_error"),
    ErrorType.PAYLOAD_TOO_LARGE: (413, "invalid_request_error"),
    ErrorType.UPGRADE_REQUIRED: (426, "invalid_request_error"),
    ErrorType.RATE_LIMITED: (429, "rate_limit_error"),
    ErrorType.HEADERS_TOO_LARGE: (431, "invalid_request_error"),
    ErrorType.INTERNAL: (500, "server_error"),
    ErrorType.BAD_GATEWAY: (502, "server_error"),
    ErrorType.OVERLOADED: (429, "rate_limit_error"),
    ErrorType.UNAVAILABLE: (503, "server_error"),
    ErrorType.TIMEOUT: (504, "server_error"),
}

# Where the OpenAI shape applies instead of the contract's: the /v1 API and vLLM's tokenizer
# routes, all served by the OpenAI frontend (path prefixes).
OPENAI_PATH_PREFIXES = ("/v1/", "/tokenize", "/detokenize")


# The types the model itself sets on its error responses (the others come from Envoy or
# Triton). Each has a gRPC code above.
MODEL_ERRORS: frozenset[ErrorType] = frozenset(GRPC_STATUS)


def wire_message(kind: ErrorType, message: str) -> str:
    """The text of a model's error response: `<type>: <message>`, the type first.

    Why the type travels inside the message: Triton's generate endpoints answer every model
    error with HTTP 400 and a body of `{"error": "<message>"}`, so the message is the only
    field that reaches the gateway; gateway/error_contract.lua reads the type back to set the
    status (a full queue is a 503, not a 400) and the body.
    """
    if kind not in MODEL_ERRORS:
        raise ValueError(f"the model does not set error type {kind.value!r}")
    return f"{kind.value}: {message}"
