"""Reading request bodies at the HTTP edge: size limit, content encodings, stalled clients."""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web

from .errors import TOO_LARGE, Problem


async def read_body(request: web.Request, *, limit: int) -> bytes:
    """The request body; 413 beyond ``limit`` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise Problem(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"The request body is larger than the limit of {limit} bytes.",
            type=TOO_LARGE,
        )
    return await request.read()  # aiohttp raises 413 beyond client_max_size
