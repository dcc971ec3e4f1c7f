"""Headless Chromium and a local static server for the web artifacts, one browser per process.

The server sends every response cross-origin isolated (COOP/COEP), as a page must be for WASM threads, and
serves only files below its mounts. Chromium is Debian's ``chromium`` (``make install`` installs it), driven by
Playwright's protocol client with that executable; its own networking is off (the machines here are offline).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import threading
from functools import cache
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from core.errors import ToolchainError, require

WEB_DIR = Path(__file__).resolve().parent
NODE_MODULES = WEB_DIR / "node_modules"
ORT_DIST = NODE_MODULES / "onnxruntime-web" / "dist"
PAGE_DIR = WEB_DIR / "page"
CHROMIUM_ARGS = (
    "--headless=new", "--no-sandbox", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-extensions",
    # Headless Linux hides WebGPU without it; the page then asks for an adapter and reports what it found.
    "--enable-unsafe-webgpu",
)
INSTALL_HINT = "run `make install` (apt-get install chromium; npm ci in converters/web)"


class WebRuntimeMissing(ToolchainError):
    """Chromium or the pinned JavaScript packages are not installed."""


def chromium_executable() -> str:
    """$CHROMIUM, else Debian's chromium on PATH."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise WebRuntimeMissing(f"the web target runs in headless Chromium, which is not installed: {INSTALL_HINT}")
    return found


def ort_web_version() -> str:
    package = NODE_MODULES / "onnxruntime-web" / "package.json"
    if not package.is_file():
        raise WebRuntimeMissing(f"onnxruntime-web is not installed in {NODE_MODULES}: {INSTALL_HINT}")
    return str(json.loads(package.read_text(encoding="utf-8"))["version"])


class _Handler(SimpleHTTPRequestHandler):
    mounts: dict[str, Path] = {}
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream"}

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, root in sorted(self.mounts.items(), key=lambda item: -len(item[0])):
            if path.startswith(prefix):
                target = (root / path[len(prefix):]).resolve()
                if target.is_relative_to(root.resolve()):
                    return str(target)
        return str(PAGE_DIR / "missing")  # 404

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the base class's name)
        pass


class StaticServer:
    """Serves {url prefix: folder} on 127.0.0.1 in a daemon thread until closed."""

    def __init__(self, mounts: dict[str, Path]) -> None:
        handler = type("MountedHandler", (_Handler,), {"mounts": dict(mounts)})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@cache
def browser() -> Any:
    """The process's headless Chromium (playwright.sync_api.Browser), started on first use, closed at exit."""
    driver = require("playwright.sync_api", "web").sync_playwright().start()  # loaded only by web artifacts
    launched = driver.chromium.launch(executable_path=chromium_executable(), args=list(CHROMIUM_ARGS))

    def close() -> None:
        launched.close()
        driver.stop()

    atexit.register(close)
    return launched


def open_page(server: StaticServer, path: str = "/index.html") -> Any:
    """A fresh page (own context, no shared cache) on ``path``, once its harness reports ready."""
    page = browser().new_context().new_page()
    page.goto(server.url + path)
    page.wait_for_function("window.harnessReady === true", timeout=60_000)
    return page
