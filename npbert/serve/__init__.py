"""`npbert serve`: the HTTP endpoint (FastAPI on uvicorn, the `serve` extra).

app.py      the app factory: model loading, routes, errors, health, OpenAPI
schemas.py  the request/response schemas and the parsing of a raw body
batcher.py  dynamic batching of concurrent requests into shared pipeline calls
"""

from .app import Settings, create_app
from .schemas import Limits

__all__ = ["Limits", "Settings", "create_app"]
