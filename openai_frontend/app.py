"""The ASGI app: OpenAI's routes, each parse -> generate on Triton -> answer.

Behind the gateway only: Envoy has checked the API key, applied the key's rate limit and
written the access log before a request gets here; the request id and the caller's key id
arrive as headers and go on to Triton for the model's log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contracts import engine_info
from contracts.errors import ErrorType
from contracts.headers import FORWARDED, Header
from monitoring import otlp

from . import responses
from .errors import OpenAIError, invalid
from .metrics import FrontendMetrics
from .protocol import (Request, parse_chat, parse_completion, parse_detokenize, parse_lora_command,
                       parse_tokenize)
from .served_model import ServedModel
from .triton import Event, Final, Piece, Triton, manage_adapters

log = logging.getLogger("openai_frontend")


def error_response(error: OpenAIError) -> Response:
    return Response(error.json(), status_code=error.status, media_type="application/json",
                    headers=error.headers())


async def _json_body(http: HTTPRequest) -> Any:
    try:
        return json.loads(await http.body())
    except ValueError as exc:  # UnicodeDecodeError included
        raise invalid(f"the request body is not valid JSON: {exc}") from None


class ClientLeft(Exception):
    """The client disconnected before its answer was ready; there is nobody to answer."""


class UntilDisconnect:
    """`with UntilDisconnect(http):` runs its body in this task until the client disconnects;
    then the body is cancelled (which unwinds the generation and so cancels it on Triton) and
    the block ends quietly. A cancellation from anywhere else (the server stopping) goes on.

    Why the handler's own task and not a task per piece of work: every hand-over between tasks
    costs a turn of the event loop, which at 32 streams is a few milliseconds of queued chunk
    writes, on the path of every first token."""

    def __init__(self, http: HTTPRequest) -> None:
        self._http = http
        self.left = False

    def __enter__(self) -> "UntilDisconnect":
        handler = asyncio.current_task()
        assert handler is not None
        self._handler = handler
        self._watcher = asyncio.ensure_future(self._watch())
        return self

    async def _watch(self) -> None:
        while (await self._http.receive())["type"] != "http.disconnect":
            pass
        self.left = True
        self._handler.cancel()

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> bool:
        self._watcher.cancel()
        if kind is asyncio.CancelledError and self.left:
            self._handler.uncancel()
            return True  # the client left: nobody to answer, nothing to report
        return False


async def _or_disconnect(http: HTTPRequest, work: Awaitable[Any]) -> Any:
    """`work`'s result, awaited in this task; ClientLeft when the client leaves first."""
    with UntilDisconnect(http):
        return await work
    raise ClientLeft()


class EventStream(Response):
    """A server-sent-event answer, written from the handler's own task.

    Why not Starlette's StreamingResponse: under the ASGI spec uvicorn speaks (2.3) it starts
    a task group and a second task per answer; this writes each chunk straight to the server
    and leaves on a disconnect the same way `_or_disconnect` does."""

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache"})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        with UntilDisconnect(HTTPRequest(scope, receive)):
            await send({"type": "http.response.start", "status": 200,
                        "headers": self.raw_headers})
            async for chunk in self._chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class OpenAIFrontend:
    """Holds the served model and the Triton client; one instance per server process."""

    def __init__(self, model: ServedModel, triton_url: str,
                 metrics_url: Optional[str] = None, adapter_peers: tuple[str, ...] = ()) -> None:
        """`adapter_peers`: the Triton gRPC addresses of the other replicas of this pool,
        which an adapter load or unload sent here is passed on to (docs/adapters.md)."""
        self.model = model
        self._triton_url = triton_url
        self._triton: Optional[Triton] = None
        self._adapter_peers = adapter_peers
        self._peer_clients: Optional[list[Any]] = None
        self._metrics_url = metrics_url
        self._engine: Optional[dict[str, str]] = None
        self.metrics = FrontendMetrics()
        # Spans of each /v1 generation when OTEL_EXPORTER_OTLP_ENDPOINT is set (else None).
        self._tracer = otlp.tracer("llm-openai-frontend")

    @property
    def triton(self) -> Triton:
        if self._triton is None:  # gRPC's aio channel must be made inside the server's loop
            self._triton = Triton(self._triton_url)
        return self._triton

    # ---- routes ---------------------------------------------------------------------------

    async def health(self, _http: HTTPRequest) -> Response:
        ready = await self.triton.ready()
        return JSONResponse({"status": "ready" if ready else "waiting for the model"},
                            status_code=200 if ready else 503)

    async def list_models(self, _http: HTTPRequest) -> Response:
        """The base model, then each adapter its replica serves now (`parent`: the base)."""
        base = self.model.card(await self._engine_facts())
        return JSONResponse({"object": "list", "data": [base] + [
            self.model.adapter_card(name) for name in await self._adapter_names()]})

    async def get_model(self, http: HTTPRequest) -> Response:
        model = http.path_params["model"]
        if model == self.model.id:
            return JSONResponse(self.model.card(await self._engine_facts()))
        await self._check_model(model)
        return JSONResponse(self.model.adapter_card(model))

    async def _adapter_names(self) -> list[str]:
        """The adapters this replica serves (none while its Triton cannot be reached)."""
        try:
            served = await self.triton.adapters()
        except OpenAIError:
            return []
        return [adapter["name"] for adapter in served["adapters"]]

    async def load_lora_adapter(self, http: HTTPRequest) -> Response:
        name, path = parse_lora_command(await _json_body(http), load=True)
        return await self._adapter_command(http, "load", name, path)

    async def unload_lora_adapter(self, http: HTTPRequest) -> Response:
        name, _ = parse_lora_command(await _json_body(http), load=False)
        return await self._adapter_command(http, "unload", name, "")

    async def _adapter_command(self, http: HTTPRequest, action: str, name: str,
                               path: str) -> Response:
        """Load or unload on this replica, then on its pool's other replicas.

        This replica's answer decides (a 403 for a key below the admin tier, a 404 or 400
        naming what is wrong): nothing is passed on when it refused. A peer that fails after
        it succeeded makes a 502 naming the peers (the command may be sent again: loading is
        idempotent, unloading an adapter already gone is a 404)."""
        if name == self.model.id:
            raise invalid(f"`lora_name` {name!r} is the base model's id", "lora_name")
        headers = {h.value: http.headers[h.value] for h in FORWARDED if h.value in http.headers}
        served = await self.triton.adapters(action, name, path, headers)
        failed = []
        for url, client in zip(self._adapter_peers, self._peers()):
            try:
                await manage_adapters(client, action, name, path, headers)
            except OpenAIError as exc:
                failed.append(f"{url}: {exc.message}")
        if failed:
            raise OpenAIError(ErrorType.BAD_GATEWAY, f"adapter `{name}` {action}ed on this "
                              f"replica but not on {len(failed)} of its pool's "
                              f"{len(self._adapter_peers)} other replicas: {'; '.join(failed)}")
        log.info("adapter %s %sed on %d replicas", name, action, 1 + len(self._adapter_peers))
        return JSONResponse({"object": "lora_adapter", "name": name, "action": action,
                             "replicas": 1 + len(self._adapter_peers),
                             "adapters": [a["name"] for a in served["adapters"]]})

    def _peers(self) -> list[Any]:
        """gRPC clients of the peers, made on first use (inside the server's event loop)."""
        if self._peer_clients is None:
            import tritonclient.grpc.aio as grpcaio

            self._peer_clients = [grpcaio.InferenceServerClient(url)
                                  for url in self._adapter_peers]
        return self._peer_clients

    async def _engine_facts(self) -> Optional[dict[str, str]]:
        """What the model process chose at load (dtype and why, executor, forward path), read
        once from Triton's metrics endpoint (contracts/engine_info.py); None until the model
        has loaded, or where the endpoint cannot be reached (the card then goes without)."""
        if self._engine is None and self._metrics_url:
            self._engine = await asyncio.to_thread(engine_info.read, self._metrics_url)
        return self._engine

    async def completions(self, http: HTTPRequest) -> Response:
        request = parse_completion(await _json_body(http))
        # A prompt sent as token ids runs as those ids; its text is the echo and text_input.
        prompt = (self.model.tokenizer.decode(list(request.prompt_ids))
                  if request.prompt_ids else request.prompt)
        return await self._answer(http, request, prompt, chat=False)

    async def tokenize(self, http: HTTPRequest) -> Response:
        """vLLM's /tokenize: the ids the model would see, and its context length."""
        request = parse_tokenize(await _json_body(http))
        await self._check_model(request.model)  # adapters share the base model's tokenizer
        if request.prompt is not None:
            text, special = request.prompt, request.add_special_tokens
        else:
            text = self.model.chat_prompt(request.messages, request.add_generation_prompt)
            special = request.add_special_tokens
        tokens = self.model.tokenizer.encode(text, add_special_tokens=special)
        strings = (self.model.tokenizer.convert_ids_to_tokens(tokens)
                   if request.return_token_strs else None)
        return JSONResponse({"count": len(tokens), "max_model_len": self.model.context_length,
                             "tokens": tokens, "token_strs": strings})

    async def detokenize(self, http: HTTPRequest) -> Response:
        """vLLM's /detokenize: the text of a list of token ids."""
        model, tokens = parse_detokenize(await _json_body(http), self.model.vocab_size)
        await self._check_model(model)
        return JSONResponse({"prompt": self.model.tokenizer.decode(tokens)})

    async def chat_completions(self, http: HTTPRequest) -> Response:
        request = parse_chat(await _json_body(http))
        return await self._answer(http, request, self.model.chat_prompt(request.messages),
                                  chat=True)

    # ---- answering ------------------------------------------------------------------------

    async def _check_model(self, model: str) -> None:
        """The base model or an adapter its replica serves; else a 404 naming them."""
        if model == self.model.id:
            return
        adapters = await self._adapter_names()
        if model not in adapters:
            names = ", ".join(f"`{n}`" for n in [self.model.id, *adapters])
            raise OpenAIError(ErrorType.NOT_FOUND, f"the model `{model:.80}` does not exist; "
                              f"this server serves {names} (GET /v1/models)", "model")

    async def _answer(self, http: HTTPRequest, request: Request, prompt: str,
                      chat: bool) -> Response:
        headers = {h.value: http.headers[h.value] for h in FORWARDED if h.value in http.headers}
        if request.model != self.model.id:
            # An adapter's name: the engine runs it, or answers 404 naming those it serves.
            headers[Header.ADAPTER.value] = request.model
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        response_id = ("chatcmpl-" if chat else "cmpl-") + request_id
        created = int(time.time())
        echo = prompt if request.echo else ""
        choices = request.sampling.n or 1
        span = self._span(http, request_id, request.stream)
        if span is not None:  # Triton's spans, then the engine's, become its children
            headers["traceparent"] = otlp.traceparent_of(span)
        events = self.triton.generate(prompt, request.sampling, request.stream, headers,
                                      request.prompt_ids)
        try:
            if not request.stream:
                whole = await _failing(span, _or_disconnect(http, _collect(events, choices)))
                _end(span)
                build = responses.chat_completion if chat else responses.completion
                return JSONResponse(build(response_id, created, request.model, [
                    self._choice(request, prompt, echo, piece, final, chat)
                    for piece, final in whole]))
            # The first event is awaited before answering, so a refusal is a plain status.
            first = await _failing(span, _or_disconnect(http, events.__anext__()))
        except OpenAIError as exc:
            if exc.kind is ErrorType.NOT_FOUND and request.model != self.model.id:
                await self._check_model(request.model)  # the 404 names every model served
            raise
        writer = responses.ChunkWriter(chat, response_id, created, request.model,
                                       request.include_usage,
                                       request.sampling.logprobs is not None, len(echo), choices)
        streamed = self.metrics.streamed_tokens.labels(http.url.path)
        return EventStream(_stream(writer, echo, first, events, streamed.inc,
                                   lambda: _end(span)))

    def _span(self, http: HTTPRequest, request_id: str, stream: bool) -> Optional[Span]:
        """This frontend's span of a generation, the child of the gateway's (the
        `traceparent` Envoy sent), or None when tracing is off. Ids and route only."""
        if self._tracer is None:
            return None
        return self._tracer.start_span(
            f"POST {http.url.path}", context=otlp.context_from(http.headers),
            kind=SpanKind.SERVER, attributes={"http.route": http.url.path,
                                              "llm.request_id": request_id,
                                              "llm.stream": stream})

    def _choice(self, request: Request, prompt: str, echo: str, piece: Piece, final: Final,
                chat: bool) -> responses.Choice:
        """One whole sequence of a non-streamed answer, its logprobs in the API's shape."""
        if request.sampling.logprobs is None:
            shaped = None
        elif chat:
            shaped = responses.chat_logprobs(piece.logprobs)
        else:
            scored = list(final.prompt_logprobs or ()) if request.echo else []
            shaped = responses.completion_logprobs(
                scored + list(piece.logprobs),
                first_token=self.model.first_token_text(prompt, request.prompt_ids)
                if scored else "")
        return responses.Choice(echo + piece.text, final, shaped)


async def _collect(events: AsyncIterator[Event], choices: int) -> list[tuple[Piece, Final]]:
    """All of a generation: per sequence (by index), its pieces joined into one and its end."""
    pieces: list[list[Piece]] = [[] for _ in range(choices)]
    finals: dict[int, Final] = {}
    try:
        async for item in events:
            if isinstance(item, Final):
                finals[item.index] = item
            else:
                pieces[item.index].append(item)
    finally:
        await events.aclose()  # ends the gRPC stream now, not when collected
    if len(finals) != choices:
        raise OpenAIError(ErrorType.INTERNAL, "the generation ended without its final response")
    return [(Piece("".join(p.text for p in own), tuple(e for p in own for e in p.logprobs), i),
             finals[i]) for i, own in enumerate(pieces)]


def _end(span: Optional[Span], error: Optional[BaseException] = None) -> None:
    if span is None:
        return
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()


async def _failing(span: Optional[Span], work: Awaitable[Any]) -> Any:
    """`work`'s result; if it raises (a refusal, the client leaving), the span ends with the
    error first."""
    try:
        return await work
    except BaseException as exc:
        _end(span, exc)
        raise


async def _stream(writer: responses.ChunkWriter, echo: str, first: Event,
                  events: AsyncIterator[Event], count_tokens: Callable[[int], None],
                  finished: Callable[[], None] = lambda: None) -> AsyncIterator[bytes]:
    """The SSE body. It is cancelled when the client disconnects; closing `events` then
    cancels the generation. An error after the start is a final `error` event. The opening
    chunks (role, echo: one per choice) go out in the same write as the first text; each
    choice ends with its finish chunk, the last one with the usage and `[DONE]`; its tokens
    are counted then (`count_tokens`), once per sequence rather than per chunk. `finished`
    runs when the body ends, however it ends."""
    try:
        head = writer.first() + (b"".join(writer.text(echo, index=i)
                                          for i in range(writer.choices)) if echo else b"")
        ended: list[Final] = []
        item = first
        while True:
            if isinstance(item, Final):
                ended.append(item)
                count_tokens(item.completion_tokens)
                last = len(ended) == writer.choices
                chunk = head + writer.finish(item, ended if last else ())
                if last:
                    yield chunk + writer.end(ended) + responses.DONE
                    return
                yield chunk
            else:
                yield head + writer.text(item.text, item.logprobs, item.index)
            head = b""
            item = await events.__anext__()
    except OpenAIError as error:
        yield responses.event(error.body()) + responses.DONE
    finally:
        finished()
        await events.aclose()


def _handled(route: Callable[[HTTPRequest], Awaitable[Response]], path: str,
             metrics: FrontendMetrics) -> Callable[[HTTPRequest], Awaitable[Response]]:
    """The route, answering every failure in the API's shape and counted under `path` (the
    route's pattern, not the requested path: one series per route)."""
    async def handle(http: HTTPRequest) -> Response:
        began = time.perf_counter()
        try:
            response = await route(http)
        except OpenAIError as error:
            metrics.errors.labels(path, error.kind.value).inc()
            response = error_response(error)
        except ClientLeft:
            response = Response(status_code=499)  # nobody reads it: the connection is gone
        except Exception:  # a bug here must still answer in the API's shape
            log.exception("request failed")
            metrics.errors.labels(path, ErrorType.INTERNAL.value).inc()
            response = error_response(OpenAIError(
                ErrorType.INTERNAL, "the request failed on the server; quote the x-request-id "
                "when reporting"))
        stream = isinstance(response, EventStream)
        metrics.first_byte.labels(path, "true" if stream else "false").observe(
            time.perf_counter() - began)
        metrics.requests.labels(path, str(response.status_code)).inc()
        return response
    return handle


async def _not_found(http: HTTPRequest, _exc: Exception) -> Response:
    return error_response(OpenAIError(ErrorType.NOT_FOUND, f"no route {http.url.path}"))


async def _not_allowed(http: HTTPRequest, _exc: Exception) -> Response:
    return error_response(OpenAIError(ErrorType.METHOD_NOT_ALLOWED,
                                      f"{http.method} is not allowed on {http.url.path}"))


def create_app(frontend: OpenAIFrontend) -> Starlette:
    def api(path: str, route: Callable[[HTTPRequest], Awaitable[Response]],
            method: str) -> Route:
        return Route(path, _handled(route, path, frontend.metrics), methods=[method])

    routes = [
        Route("/health", frontend.health, methods=["GET"]),
        api("/v1/models", frontend.list_models, "GET"),
        api("/v1/models/{model:path}", frontend.get_model, "GET"),
        api("/v1/completions", frontend.completions, "POST"),
        api("/v1/chat/completions", frontend.chat_completions, "POST"),
        api("/tokenize", frontend.tokenize, "POST"),
        api("/detokenize", frontend.detokenize, "POST"),
        api("/v1/load_lora_adapter", frontend.load_lora_adapter, "POST"),
        api("/v1/unload_lora_adapter", frontend.unload_lora_adapter, "POST"),
    ]
    return Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed})
