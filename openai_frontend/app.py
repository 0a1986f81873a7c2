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

from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.error_contract import ErrorType

from . import responses
from .errors import OpenAIError, invalid
from .protocol import Request, parse_chat, parse_completion
from .served_model import ServedModel
from .triton import FORWARDED, Event, Finished, Triton

log = logging.getLogger("openai_frontend")


def error_response(error: OpenAIError) -> Response:
    return Response(error.json(), status_code=error.status, media_type="application/json",
                    headers=error.headers())


async def _json_body(http: HTTPRequest) -> Any:
    try:
        return json.loads(await http.body())
    except ValueError as exc:  # UnicodeDecodeError included
        raise invalid(f"the request body is not valid JSON: {exc}") from None


async def _or_disconnect(http: HTTPRequest, work: Awaitable[Any]) -> Any:
    """`work`'s result, unless the client leaves first: then `work` is cancelled (which
    cancels the generation on Triton) and CancelledError is raised."""
    task = asyncio.ensure_future(work)

    async def left() -> None:
        while (await http.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(left())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise asyncio.CancelledError("the client disconnected")
    return task.result()


class OpenAIFrontend:
    """Holds the served model and the Triton client; one instance per server process."""

    def __init__(self, model: ServedModel, triton_url: str) -> None:
        self.model = model
        self._triton_url = triton_url
        self._triton: Optional[Triton] = None

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
        return JSONResponse({"object": "list", "data": [self.model.card()]})

    async def get_model(self, http: HTTPRequest) -> Response:
        self._check_model(http.path_params["model"])
        return JSONResponse(self.model.card())

    async def completions(self, http: HTTPRequest) -> Response:
        request = parse_completion(await _json_body(http))
        self._check_model(request.model)
        return await self._answer(http, request, request.prompt, chat=False)

    async def chat_completions(self, http: HTTPRequest) -> Response:
        request = parse_chat(await _json_body(http))
        self._check_model(request.model)  # before rendering with that model's template
        return await self._answer(http, request, self.model.chat_prompt(request.messages),
                                  chat=True)

    # ---- answering ------------------------------------------------------------------------

    def _check_model(self, model: str) -> None:
        if model != self.model.id:
            raise OpenAIError(ErrorType.NOT_FOUND, f"the model `{model}` does not exist; this "
                              f"server serves `{self.model.id}` (GET /v1/models)", "model")

    async def _answer(self, http: HTTPRequest, request: Request, prompt: str,
                      chat: bool) -> Response:
        headers = {name: http.headers[name] for name in FORWARDED if name in http.headers}
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        response_id = ("chatcmpl-" if chat else "cmpl-") + request_id
        created = int(time.time())
        echo = prompt if request.echo else ""
        events = self.triton.generate(prompt, request.sampling, request.stream, headers)
        if not request.stream:
            text, final = await _or_disconnect(http, _collect(events))
            build = responses.chat_completion if chat else responses.completion
            return JSONResponse(build(response_id, created, self.model.id, echo + text, final))
        # The first event is awaited before answering, so a refusal is still a plain status.
        first = await _or_disconnect(http, events.__anext__())
        writer = responses.ChunkWriter(chat, response_id, created, self.model.id,
                                       request.include_usage)
        return StreamingResponse(_stream(writer, echo, first, events),
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})


async def _collect(events: AsyncIterator[Event]) -> tuple[str, Finished]:
    pieces = []
    try:
        async for item in events:
            if isinstance(item, Finished):
                return "".join(pieces), item
            pieces.append(item)
    finally:
        await events.aclose()  # ends the gRPC stream now, not when collected
    raise OpenAIError(ErrorType.INTERNAL, "the generation ended without its final response")


async def _stream(writer: responses.ChunkWriter, echo: str, first: Event,
                  events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    """The SSE body. Starlette cancels it when the client disconnects; closing `events` then
    cancels the generation. An error after the start is a final `error` event."""
    try:
        yield writer.first() + (writer.text(echo) if echo else b"")
        item = first
        while True:
            if isinstance(item, Finished):
                yield writer.finish(item) + responses.DONE
                return
            yield writer.text(item)
            item = await events.__anext__()
    except OpenAIError as error:
        yield responses.event(error.body()) + responses.DONE
    finally:
        await events.aclose()


def _handled(route: Callable[[HTTPRequest], Awaitable[Response]]
             ) -> Callable[[HTTPRequest], Awaitable[Response]]:
    async def handle(http: HTTPRequest) -> Response:
        try:
            return await route(http)
        except OpenAIError as error:
            return error_response(error)
        except Exception:  # a bug here must still answer in the API's shape
            log.exception("request failed")
            return error_response(OpenAIError(ErrorType.INTERNAL, "the request failed on the "
                                              "server; quote the x-request-id when reporting"))
    return handle


async def _not_found(http: HTTPRequest, _exc: Exception) -> Response:
    return error_response(OpenAIError(ErrorType.NOT_FOUND, f"no route {http.url.path}"))


async def _not_allowed(http: HTTPRequest, _exc: Exception) -> Response:
    return error_response(OpenAIError(ErrorType.METHOD_NOT_ALLOWED,
                                      f"{http.method} is not allowed on {http.url.path}"))


def create_app(frontend: OpenAIFrontend) -> Starlette:
    routes = [
        Route("/health", frontend.health, methods=["GET"]),
        Route("/v1/models", _handled(frontend.list_models), methods=["GET"]),
        Route("/v1/models/{model:path}", _handled(frontend.get_model), methods=["GET"]),
        Route("/v1/completions", _handled(frontend.completions), methods=["POST"]),
        Route("/v1/chat/completions", _handled(frontend.chat_completions), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed})
