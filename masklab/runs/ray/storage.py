"""Where a distributed run reads and writes: local paths or ``pyarrow.fs`` URIs (``s3://``, ``gs://``,
``hdfs://``, ``file://``).

On a cluster every worker must see the inputs and the output folder: a shared file system mounted at the
same path on each node, or object storage named by URI. Credentials for object storage come from the
usual places of that store (``AWS_*`` environment variables, instance roles, ``~/.aws``), read by pyarrow.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

from masklab.errors import UsageError
from masklab.io.images import IMAGE_SUFFIXES
from masklab.io.inputs import InputItem

__all__ = ["Store", "is_uri", "is_storage_uri", "expand_sources", "read_bytes"]


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` strings (object storage, ``file://``, http); False for plain paths."""
    return "://" in str(path)


def is_storage_uri(path: str | os.PathLike) -> bool:
    """A URI read and written through ``pyarrow.fs`` (``s3://``, ``gs://``, ``hdfs://``, ``file://``...);
    http(s) URLs are downloads (:func:`masklab.io.inputs.fetch_url`), not storage."""
    text = str(path)
    return is_uri(text) and text.split("://", 1)[0].lower() not in ("http", "https")


def _from_uri(uri: str):
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError variants depending on the scheme
        raise UsageError(f"cannot open {uri!r} as a pyarrow file system URI ({e})") from None


def _list_uri(uri: str, *, recursive: bool) -> list[str]:
    """Image files under ``uri`` (a folder) or ``uri`` itself (a file), as URIs, sorted."""
    from pyarrow import fs

    filesystem, path = _from_uri(uri)
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.NotFound:
        raise UsageError(f"input {uri!r} does not exist")
    scheme = uri.split("://", 1)[0]
    if info.type == fs.FileType.File:
        return [uri]
    entries = filesystem.get_file_info(fs.FileSelector(path, recursive=recursive))
    found = [
        e.path
        for e in entries
        if e.type == fs.FileType.File
        and Path(e.path).suffix.lower() in IMAGE_SUFFIXES
        and not Path(e.path).name.startswith(".")
    ]
    # pyarrow gives paths without the scheme; a local path keeps its leading "/" after "file://".
    return sorted(f"{scheme}://{p}" for p in found)


def expand_sources(inputs: Sequence[str], *, recursive: bool = False, allow_urls: bool = False) -> list[InputItem]:
    """Expand CLI inputs into :class:`~masklab.io.inputs.InputItem` rows, with the local engine's rules.

    Plain paths, globs, ``-`` and http(s) URLs go through :func:`~masklab.io.inputs.expand_inputs`, so
    names and output stems equal the local engine's. Storage URIs (``s3://``, ``gs://``, ``hdfs://``,
    ``file://``...) are listed with ``pyarrow.fs`` (a file, or a folder's image files; no globs) and
    become items with ``url`` set to the URI; where a stem is taken twice, each URI item gets
    ``stem-<8 hex of its URI>``.
    """
    from masklab.io.inputs import expand_inputs

    plain = [s for s in inputs if not is_storage_uri(s)]
    uris: list[str] = []
    for raw in inputs:
        if is_storage_uri(raw):
            if any(ch in raw for ch in "*?["):
                raise UsageError(f"glob patterns are not supported in URIs, found {raw!r}: name a folder or a file")
            uris.extend(_list_uri(raw, recursive=recursive))
    items = expand_inputs(plain, recursive=recursive, allow_urls=allow_urls) if plain else []
    uris = list(dict.fromkeys(uris))
    taken = {it.stem for it in items}
    names = [Path(u.split("://", 1)[1]).name for u in uris]
    stems = [Path(n).stem or "image" for n in names]
    for u, name, stem in zip(uris, names, stems):
        if stems.count(stem) > 1 or stem in taken:
            stem = f"{stem}-{hashlib.sha1(u.encode()).hexdigest()[:8]}"
        items.append(InputItem(Path(name), stem, u))
    return items


def read_bytes(location: str) -> bytes:
    """The bytes of a URI (local paths are read by the image loader itself)."""
    filesystem, path = _from_uri(location)
    with filesystem.open_input_stream(path) as f:
        return f.read()


class Store:
    """An output folder, local or behind a URI, with atomic whole-file writes.

    Each file is written under a temporary name in the same folder and then moved into place: a rename
    on local and POSIX-like file systems; object stores make an object visible only once it is complete.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        from pyarrow import fs

        root = str(root)
        self.uri = root if is_uri(root) else None
        if self.uri:
            self.fs, self.root = _from_uri(root)
        else:
            self.fs, self.root = fs.LocalFileSystem(), os.path.abspath(root)
        self.fs.create_dir(self.root, recursive=True)

    @property
    def local_dir(self) -> Path | None:
        """The folder as a local path when the store is on the local file system, else None."""
        from pyarrow import fs

        return Path(self.root) if isinstance(self.fs, fs.LocalFileSystem) else None

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def write_bytes(self, rel: str, data: bytes) -> str:
        final = self.path(rel)
        folder, _, name = final.rpartition("/")
        self.fs.create_dir(folder, recursive=True)
        tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, final)
        return final

    def write_parquet(self, rel: str, table) -> str:
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        return self.write_bytes(rel, sink.getvalue().to_pybytes())

    def list_files(self, rel: str, suffix: str) -> list[str]:
        """Names (no folder) of the files in ``rel`` ending in ``suffix``; none if the folder is missing."""
        from pyarrow import fs

        infos = self.fs.get_file_info(fs.FileSelector(self.path(rel), allow_not_found=True))
        return sorted(
            i.base_name
            for i in infos
            if i.type == fs.FileType.File and i.base_name.endswith(suffix) and not i.base_name.startswith(".")
        )

    def delete(self, rel: str) -> None:
        self.fs.delete_file(self.path(rel))

    def read_parquet(self, rels: list[str], columns: list[str] | None = None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [pq.read_table(self.path(r), columns=columns, filesystem=self.fs) for r in rels]
        return pa.concat_tables(tables) if tables else None

    def exists(self, rel: str) -> bool:
        from pyarrow import fs

        return self.fs.get_file_info(self.path(rel)).type == fs.FileType.File

    def read_text(self, rel: str) -> str:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read().decode("utf-8")

    def __str__(self) -> str:
        return self.uri or self.root
