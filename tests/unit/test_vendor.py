"""The data docs' CDN links are served from the pinned packages `make install` fetched."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from expectations.vendor import PINS, localise

CDN = "https://cdnjs.cloudflare.com/ajax/libs"
PAGE = f"""<html><head>
<script src="https://code.jquery.com/jquery-3.7.1.min.js" integrity="x" crossorigin="a"></script>
<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>
<link href="{CDN}/font-awesome/6.6.0/css/all.min.css" rel="stylesheet">
<script src="https://code.jquery.com/jquery-9.9.9.min.js"></script>
</head><body></body></html>"""


def test_pages_point_at_local_copies_with_the_network_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("the data docs tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert all(pin.tarball.exists() for pin in PINS), "run `make install` (fetches the pins)"
    site = tmp_path / "site"
    (site / "validations").mkdir(parents=True)
    (site / "validations" / "run.html").write_text(PAGE)

    with caplog.at_level(logging.WARNING):
        assert localise(site) == 1

    html = (site / "validations" / "run.html").read_text()
    jquery = "static/vendor/jquery@3.7.1/dist/jquery.min.js"
    assert f'src="../{jquery}"' in html and (site / jquery).read_text().startswith("/*!")
    assert "crossorigin" not in html and "integrity" not in html  # a file:// page rejects them
    vega = "static/vendor/vega@5.33.1/build/vega.min.js"  # the major version's pin
    assert f'src="../{vega}"' in html and (site / vega).stat().st_size > 100_000
    fonts = site / "static/vendor/@fortawesome__fontawesome-free@6.6.0/webfonts"
    assert any(fonts.glob("*.woff2"))  # the stylesheet's fonts come along
    # a version nobody pinned keeps its CDN link, and the build says why
    assert "https://code.jquery.com/jquery-9.9.9.min.js" in html
    assert "jquery@9.9.9 is not pinned" in caplog.text
