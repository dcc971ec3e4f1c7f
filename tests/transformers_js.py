"""transformers.js in headless Chromium, loading a folder the way the README's JavaScript lines do."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.web.browser import NODE_MODULES, StaticServer, open_page

TRANSFORMERS_JS = NODE_MODULES / "@huggingface" / "transformers"


def embed_with_transformers_js(folder: Path, texts: list[str], dtype: str = "q8") -> np.ndarray:
    server = StaticServer({
        "/tjs/": TRANSFORMERS_JS / "dist",
        # its own onnxruntime-web build (a dependency of the pinned release), for the .wasm it asks for
        "/tjs-ort/": TRANSFORMERS_JS / "node_modules" / "onnxruntime-web" / "dist",
        "/models/": folder.parent,
        "/": Path(__file__).parent / "web",
    })
    page = open_page(server, "/transformers_js.html")
    try:
        out = page.evaluate("([model, texts, dtype]) => embed(model, texts, dtype)", [folder.name, texts, dtype])
    finally:
        page.context.close()
        server.close()
    return np.asarray(out["data"], dtype=np.float32).reshape(out["dims"])
