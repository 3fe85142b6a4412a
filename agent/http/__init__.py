"""The HTTP transport: Open Inference Protocol v2 REST as a lean ASGI app (app.py), served by the
agent's own bounded HTTP/1.1 server on asyncio and httptools (server.py)."""
