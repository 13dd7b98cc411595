"""Make the data docs work offline: Great Expectations' pages load jQuery, Bootstrap,
bootstrap-table and friends from public CDNs, so on a steward's machine without internet (or
behind a proxy) their tables stay empty. After each build, every CDN script and stylesheet is
replaced by a copy kept in the site's static/vendor folder.

The copies come from npm packages pinned below (version and integrity), fetched once at install
time (`make install` runs `python -m expectations.vendor`) into the git-ignored `.vendor/npm`.
Building the docs never downloads anything: a page whose package is not there keeps its CDN link,
and the build says to run `make install`."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import PROJECT_ROOT

log = logging.getLogger(__name__)
REGISTRY = "https://registry.npmjs.org"
STORE = PROJECT_ROOT / ".vendor" / "npm"


@dataclass(frozen=True)
class Pin:
    """One npm package version the data docs need, with the registry's integrity hash."""

    package: str
    version: str
    integrity: str  # "sha512-<base64>", as npm's registry and lock files give it

    @property
    def tarball(self) -> Path:
        return STORE / f"{self.package.replace('/', '__')}-{self.version}.tgz"


# The versions the pages of the installed Great Expectations ask for (a major version, "5",
# is served by the pin of that major).
PINS = [
    Pin(
        "jquery",
        "3.7.1",
        "sha512-m4avr8yL8kmFN8psrbFFFmB/If14iN5o9nw/NgnnM+kybDJpRsAynV2BsfpTYrTRysYUdADVD7CkUUizgkpLfg==",
    ),
    Pin(
        "bootstrap",
        "4.3.1",
        "sha512-rXqOmH1VilAt2DyPzluTi2blhk17bO7ef+zLLPlWvG494pDxcM234pJ8wTc/6R40UWizAIIMgxjvxZg5kmsbag==",
    ),
    Pin(
        "popper.js",
        "1.12.9",
        "sha512-s0EEi9xiSCdqz9lV4IiVH5yIZnDX/U1t0tCjB+0jXx9jW8lrR7kOpVupiUg175ogqVoudpDXHF1p6dKATCHMeg==",
    ),
    Pin(
        "bootstrap-table",
        "1.19.0",
        "sha512-L+USHm3X9FKocx/6yngGu12yF6r6s1Ntuc+hoIK2a2QQJjHw5kcySLiE2HY/9sEaSGAOfPbfQOtBH3uKkcpqEA==",
    ),
    Pin(
        "bootstrap-table",
        "1.19.1",
        "sha512-WvV+l1AI/C+zThaKmfHmi/IuayVNB0qdFyEhFx1jyZhO0oLtNJNANkCR3rvJf6Dkh72dsLElxpE/bzK9seEQLA==",
    ),
    Pin(
        "@fortawesome/fontawesome-free",
        "6.6.0",
        "sha512-60G28ke/sXdtS9KZCpZSHHkCbdsOGEhIUGlwq6yhY74UpTiToIh8np7A8yphhM4BWsvNFtIvLpi4co+h9Mr9Ow==",
    ),
    Pin(
        "bootstrap-datepicker",
        "1.9.0",
        "sha512-9rYYbaVOheGYxjOr/+bJCmRPihfy+LkLSg4fIFMT9Od8WwWB/MB50w0JO1eBgKUMbb7PFHQD5uAfI3ArAxZRXA==",
    ),
    Pin(
        "@forevolve/bootstrap-dark",
        "1.1.0",
        "sha512-A3ucpEpxPoTVO490lZZCfjPXxv832l7mm1IxX3bXyxvgwnPGXDLyh7dWrphXKO8YBAu3EswbBEu3VSW8NRMW3A==",
    ),
    Pin(
        "vega",
        "5.33.1",
        "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
    ),
    Pin(
        "vega-lite",
        "5.23.0",
        "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
    ),
    Pin(
        "vega-embed",
        "6.29.0",
        "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
    ),
]


@dataclass(frozen=True)
class Asset:
    """A CDN URL pattern and the npm package file that replaces it."""

    pattern: str  # regex over the URL; groups feed `path`
    package: str
    version: str  # exact, or a major version ("5") served by the pin of that major
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


class MissingAssetError(LookupError):
    """A page asks for a package version that is not pinned, or not fetched yet."""


def _pin(package: str, version: str) -> Pin:
    """The pin serving `version` of `package` (exact, or the pin of a major version)."""
    for pin in PINS:
        if pin.package == package and (
            pin.version == version or (version.isdigit() and pin.version.split(".")[0] == version)
        ):
            return pin
    raise MissingAssetError(f"{package}@{version} is not pinned in expectations/vendor.py PINS")


def _verified(pin: Pin, data: bytes) -> bytes:
    algorithm, _, expected = pin.integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise ValueError(f"{pin.package}@{pin.version}: the tarball does not match its integrity")
    return data


def fetch(store: Path = STORE) -> int:
    """Install time: download every pinned tarball not yet in `store` (checked against its
    integrity); returns how many were fetched."""
    import httpx

    store.mkdir(parents=True, exist_ok=True)
    fetched = 0
    with httpx.Client(timeout=60, follow_redirects=True) as client:
        for pin in PINS:
            target = store / pin.tarball.name
            if target.exists():
                continue
            name = pin.package.split("/")[-1]
            response = client.get(f"{REGISTRY}/{pin.package}/-/{name}-{pin.version}.tgz")
            response.raise_for_status()
            tmp = target.with_suffix(".part")
            tmp.write_bytes(_verified(pin, response.content))
            tmp.replace(target)
            fetched += 1
    return fetched


def _tarball(pin: Pin) -> tarfile.TarFile:
    if not pin.tarball.exists():
        raise MissingAssetError(f"{pin.tarball} is missing: run `make install`")
    return tarfile.open(fileobj=io.BytesIO(pin.tarball.read_bytes()), mode="r:gz")


def _vendor(url: str, static: Path, done: dict[str, str]) -> str | None:
    """The site-relative path of the local copy of `url` (copied from the pinned tarball if
    needed); None if no asset serves it."""
    if url in done:
        return done[url]
    for asset in ASSETS:
        m = re.fullmatch(asset.pattern, url)
        if not m:
            continue
        groups = m.groups()
        pin = _pin(asset.package.format(*groups), asset.version.format(*groups))
        path = asset.path.format(*groups)
        target = static / "vendor" / f"{pin.package.replace('/', '__')}@{pin.version}"
        if not (target / path).exists():
            with _tarball(pin) as tar:
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
    returns how many pages changed. A link whose package is missing stays (with a warning)."""
    static = site / "static"
    done: dict[str, str] = {}
    changed = 0
    for page in site.rglob("*.html"):
        html = page.read_text()
        up = "../" * (len(page.relative_to(site).parts) - 1)

        def local(tag: re.Match[str], up: str = up) -> str:
            found = URL.search(tag.group(0))
            if found is None:
                return tag.group(0)
            try:
                path = _vendor(found.group(2), static, done)
            except (MissingAssetError, OSError, tarfile.TarError) as exc:
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


if __name__ == "__main__":
    if count := fetch():
        print(f"data docs assets: {count} pinned npm packages fetched into {STORE}")
