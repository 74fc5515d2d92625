"""The Ray Serve app: runs, status, history and stop over HTTP, and predictions with the
latest checkpoint of a run.

    import elasticfl
    app = elasticfl.serve(storage="s3://bucket/runs", address="auto")   # token: $ELASTICFL_SERVE_TOKEN
    print(app.url)                                                       # http://127.0.0.1:8000
    app.shutdown()

Importing this package loads neither Ray nor FastAPI; deploying does.
"""

from __future__ import annotations

from ._deploy import ServeHandle, serve
from ._options import ServeOptions

__all__ = ["serve", "ServeHandle", "ServeOptions"]
