"""The app uvicorn serves (`cdp serve`): settings from conf/ and the CDP_* environment."""

from __future__ import annotations

from api.main import create_app
from pipelines.config import load_settings

app = create_app(load_settings())
