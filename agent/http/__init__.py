"""The HTTP transport: Open Inference Protocol v2 REST as a lean ASGI app, served by uvicorn."""
