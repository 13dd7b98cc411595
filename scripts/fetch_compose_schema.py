"""Install time, for the tests: the Compose specification's JSON Schema as `docker compose`
itself validates with it (compose-go, pinned by version and checksum, from the Go module proxy)
into .vendor/compose-spec.json. tests/unit/test_deploy.py checks compose.yaml against it."""

from __future__ import annotations

import hashlib
import io
import sys
import urllib.request
import zipfile
from pathlib import Path

MODULE = "github.com/compose-spec/compose-go/v2"
VERSION = "v2.16.2"
SHA256 = "75410c9723430b920592093014fc53641f6207e01b52c016c848ba62bf2da805"
TARGET = Path(__file__).resolve().parent.parent / ".vendor" / "compose-spec.json"


def main() -> None:
    if TARGET.exists():
        return
    url = f"https://proxy.golang.org/{MODULE}/@v/{VERSION}.zip"
    data = urllib.request.urlopen(url, timeout=60).read()
    if hashlib.sha256(data).hexdigest() != SHA256:
        sys.exit(f"{url}: checksum mismatch (expected {SHA256})")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        schema = archive.read(f"{MODULE}@{VERSION}/schema/compose-spec.json")
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_bytes(schema)
    print(f"compose specification schema ({VERSION}) into {TARGET}")


if __name__ == "__main__":
    main()
