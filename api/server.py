"""The app uvicorn serves (`cdp serve`): settings from conf/ and the CDP_* environment.

Two interpreter settings for the request path's tail latency, set once per worker process:
- the objects alive once the app is built (modules, routes, models: hundreds of thousands)
  are frozen out of the cyclic garbage collector, whose full passes would otherwise walk them
  all, pausing every request for tens of milliseconds now and then;
- a background thread (audit writer, snapshot follower, the collector's producer) hands the
  GIL back to the event loop after 1 ms of Python code instead of the default 5 ms.
"""

from __future__ import annotations

import gc
import sys

from api.main import create_app
from pipelines.config import load_settings

sys.setswitchinterval(0.001)
app = create_app(load_settings())
gc.collect()
gc.freeze()
