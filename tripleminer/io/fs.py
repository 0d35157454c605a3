"""Copy index directories between local disk and any Beam filesystem (local, gs://, s3://).

Index libraries (bm25s, faiss) read and write local files; remote workers share them through the
work directory, so every index is built locally, uploaded, and downloaded once per worker.
"""

from __future__ import annotations

import os
import tempfile

from apache_beam.io.filesystems import FileSystems


def is_local(path: str) -> bool:
    return "://" not in path


def upload_dir(local_dir: str, remote_dir: str) -> None:
    """Copy the files of `local_dir` (flat) to `remote_dir`; a no-op when both are the same."""
    if os.path.abspath(local_dir) == os.path.abspath(remote_dir) and is_local(remote_dir):
        return
    if not FileSystems.exists(remote_dir):
        FileSystems.mkdirs(remote_dir)
    for name in sorted(os.listdir(local_dir)):
        with open(os.path.join(local_dir, name), "rb") as src, FileSystems.create(
            FileSystems.join(remote_dir, name)
        ) as dst:
            dst.write(src.read())


def local_copy(remote_dir: str) -> str:
    """A local directory holding `remote_dir`'s files: the directory itself when it is local."""
    if is_local(remote_dir):
        return remote_dir
    local_dir = tempfile.mkdtemp(prefix="tripleminer-index-")
    for meta in FileSystems.match([FileSystems.join(remote_dir, "*")])[0].metadata_list:
        name = meta.path.rstrip("/").rsplit("/", 1)[-1]
        with FileSystems.open(meta.path) as src, open(os.path.join(local_dir, name), "wb") as dst:
            dst.write(src.read())
    return local_dir
