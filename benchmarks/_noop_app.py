"""A no-op OpenAI-shaped server for HTTP benchmarks: every request gets one fixed answer.

The ASGI ``app`` reads the request body and answers ``200`` with a pre-built
chat-completion JSON, so the server's own cost is as small as it gets.
``python -m benchmarks._noop_app [--host H] [--port P]`` serves it with uvicorn
(uvloop + httptools when installed), binding the socket itself so that port 0
works, and prints ``noop listening on http://HOST:PORT/v1`` once it accepts
connections (the same shape as ``engine mock``'s ready line).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

CHAT_COMPLETION = {
    "id": "chatcmpl-noop",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
}
BODY = json.dumps(CHAT_COMPLETION, separators=(",", ":")).encode()
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
        (b"x-request-id", b"req_noop"),
    ],
}
_BODY_MESSAGE = {"type": "http.response.body", "body": BODY}


async def app(scope, receive, send) -> None:
    """ASGI app: drain the request body, answer the fixed chat completion."""
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(_START)
    await send(_BODY_MESSAGE)


def main(argv: list[str] | None = None) -> int:
    """Serve ``app`` with uvicorn until interrupted; returns the exit status."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m benchmarks._noop_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    host, port = sock.getsockname()[:2]

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            print(f"noop listening on http://{host}:{port}/v1", flush=True)

    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", backlog=2048
    )
    _Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
