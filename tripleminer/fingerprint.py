"""Keys that identify a model's outputs, for caches and index folders under the work directory."""

from __future__ import annotations

import hashlib
import os
from typing import Any


def model_key(model: str, *settings: Any) -> str:
    """`<name>-<hash>` of a model path or hub id and the settings that change its outputs. For a local
    directory the hash also covers its files' sizes and modification times, so a retrained checkpoint
    at the same path gets a new key (and stale cached outputs are never reused)."""
    ident = [model, *map(str, settings)]
    if os.path.isdir(model):
        for root, _, files in sorted(os.walk(model)):
            for name in sorted(files):
                st = os.stat(os.path.join(root, name))
                ident.append(f"{os.path.relpath(os.path.join(root, name), model)}:{st.st_size}:{int(st.st_mtime)}")
    name = os.path.basename(model.rstrip("/")) or "model"
    return f"{name}-{hashlib.blake2b('|'.join(ident).encode(), digest_size=6).hexdigest()}"
