"""Glimpse's Python client and command line: ``from glimpse import Client``, or ``glimpse --help``.

This package talks to a Glimpse server over HTTP only; it never imports the service (``app``) or the
model code (``models``), so importing it loads neither torch nor the server.
"""

from glimpse.client import (
    APIError,
    AsyncClient,
    AttentionMap,
    Client,
    Domain,
    GlimpseError,
    ModelInfo,
    ModelRef,
    Prediction,
    PredictResult,
    RequestTimedOut,
    RetryPolicy,
    ServerUnreachable,
)

__all__ = [
    "APIError",
    "AsyncClient",
    "AttentionMap",
    "Client",
    "Domain",
    "GlimpseError",
    "ModelInfo",
    "ModelRef",
    "PredictResult",
    "Prediction",
    "RequestTimedOut",
    "RetryPolicy",
    "ServerUnreachable",
]
