"""The HTTP transports: the raw-ASGI fast path, the FastAPI routes and the Open Inference Protocol."""
