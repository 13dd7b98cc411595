"""Make the data docs work offline: Great Expectations' pages load jQuery, Bootstrap,
bootstrap-table and friends from public CDNs, so on a steward's machine without internet (or
behind a proxy) their tables stay empty. After each build, every CDN script and stylesheet is
replaced by a copy taken once from the npm registry (cached under ~/.cache/telecom-cdp/npm)
and kept in the site's static/vendor folder."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)
REGISTRY = "https://registry.npmjs.org"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "telecom-cdp" / "npm"


@dataclass(frozen=True)
class Asset:
    """A CDN URL pattern and the npm package file that replaces it."""

    pattern: str  # regex over the URL; groups feed `path`
    package: str
    version: str  # exact, or a major version ("5") resolved to its newest release
    path: str  # file inside the package (str.format with the pattern's groups)
    extra: tuple[str, ...] = ()  # folders the file refers to (fonts of a stylesheet)


ASSETS = [
    Asset(
        r"https://code\.jquery\.com/jquery-([\d.]+)\.min\.js", "jquery", "{0}", "dist/jquery.min.js"
    ),
    Asset(
        r"https://(?:maxcdn|stackpath)\.bootstrapcdn\.com/bootstrap/([\d.]+)/(css|js)/(.+)",
        "bootstrap",
        "{0}",
        "dist/{1}/{2}",
    ),
    Asset(
        r"https://cdnjs\.cloudflare\.com/ajax/libs/popper\.js/([\d.]+)/umd/(.+)",
        "popper.js",
        "{0}",
        "dist/umd/{1}",
    ),
    Asset(r"https://unpkg\.com/bootstrap-table@([\d.]+)/(.+)", "bootstrap-table", "{0}", "{1}"),
    Asset(
        r"https://cdnjs\.cloudflare\.com/ajax/libs/font-awesome/([\d.]+)/css/(.+)",
        "@fortawesome/fontawesome-free",
        "{0}",
        "css/{1}",
        ("webfonts/",),
    ),
    Asset(
        r"https://cdnjs\.cloudflare\.com/ajax/libs/bootstrap-datepicker/([\d.]+)/(.+)",
        "bootstrap-datepicker",
        "{0}",
        "dist/{1}",
    ),
    Asset(
        r"https://cdn\.jsdelivr\.net/npm/@forevolve/bootstrap-dark@([\d.]+)/(.+)",
        "@forevolve/bootstrap-dark",
        "{0}",
        "{1}",
    ),
    Asset(
        r"https://cdn\.jsdelivr\.net/npm/(vega|vega-lite|vega-embed)@(\d+)$",
        "{0}",
        "{1}",
        "build/{0}.min.js",
    ),
]
TAG = re.compile(r"<(?:script|link)\b[^>]*>")
URL = re.compile(r'\b(src|href)="(https://[^"]+)"')
# the CDN's hashes and CORS mode: a file:// page cannot load a script marked crossorigin
CDN_ONLY = re.compile(r'\s(?:integrity|crossorigin)="[^"]*"')
LOGO = re.compile(r'src="https://great-expectations-web-assets[^"]*/logo-long\.png[^"]*"')


def _get(client: httpx.Client, url: str) -> bytes:
    response = client.get(url, follow_redirects=True)
    response.raise_for_status()
    return response.content


def _resolve(client: httpx.Client, package: str, version: str) -> str:
    if version.count(".") == 2:
        return version
    meta = _get(client, f"{REGISTRY}/{package}")
    versions = [
        v for v in json.loads(meta)["versions"] if v.split(".")[0] == version and "-" not in v
    ]
    return max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))


def _tarball(client: httpx.Client, package: str, version: str) -> tarfile.TarFile:
    cached = CACHE / f"{package.replace('/', '__')}-{version}.tgz"
    if not cached.exists():
        name = package.split("/")[-1]
        data = _get(client, f"{REGISTRY}/{package}/-/{name}-{version}.tgz")
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(cached)
    return tarfile.open(fileobj=io.BytesIO(cached.read_bytes()), mode="r:gz")


def _vendor(client: httpx.Client, url: str, static: Path, done: dict[str, str]) -> str | None:
    """The site-relative path of the local copy of `url`, fetched if needed; None if unknown."""
    if url in done:
        return done[url]
    for asset in ASSETS:
        m = re.fullmatch(asset.pattern, url)
        if not m:
            continue
        groups = m.groups()
        package = asset.package.format(*groups)
        version = _resolve(client, package, asset.version.format(*groups))
        path = asset.path.format(*groups)
        target = static / "vendor" / f"{package.replace('/', '__')}@{version}"
        if not (target / path).exists():
            with _tarball(client, package, version) as tar:
                for member in tar.getmembers():
                    inner = member.name.split("/", 1)[-1]  # npm tarballs nest under package/
                    wanted = inner == path or any(inner.startswith(e) for e in asset.extra)
                    if member.isfile() and wanted:
                        out = target / inner
                        out.parent.mkdir(parents=True, exist_ok=True)
                        source = tar.extractfile(member)
                        assert source is not None
                        out.write_bytes(source.read())
        done[url] = f"static/vendor/{target.name}/{path}"
        return done[url]
    return None


def localise(site: Path) -> int:
    """Rewrite every page of the data-docs `site` to local copies of its CDN resources;
    returns how many pages changed. Offline with an empty cache, pages keep the CDN links."""
    static = site / "static"
    done: dict[str, str] = {}
    changed = 0
    with httpx.Client(timeout=60) as client:
        for page in site.rglob("*.html"):
            html = page.read_text()
            up = "../" * (len(page.relative_to(site).parts) - 1)

            def local(tag: re.Match[str], up: str = up) -> str:
                found = URL.search(tag.group(0))
                if found is None:
                    return tag.group(0)
                try:
                    path = _vendor(client, found.group(2), static, done)
                except (httpx.HTTPError, OSError, tarfile.TarError, KeyError, ValueError) as exc:
                    log.warning("data docs: keeping %s (no local copy: %s)", found.group(2), exc)
                    return tag.group(0)
                if path is None:
                    return tag.group(0)
                local_tag = tag.group(0).replace(found.group(0), f'{found.group(1)}="{up}{path}"')
                return CDN_ONLY.sub("", local_tag)

            new = TAG.sub(local, html)
            new = LOGO.sub(f'src="{up}static/images/logo-long.png"', new)
            if new != html:
                page.write_text(new)
                changed += 1
    return changed
