"""Reading one file out of a fetched package, through nested containers.

A material path names a file inside the package's own file tree, with an
optional container step:

* ``usr/share/x/erase.rcc:/gcompris/src/.../kitten.webp``: a file inside a Qt
  resource file (GCompris ships its activities as `.rcc`);
* ``usr/share/games/0ad/mods/public/public.zip/audio/...``: a file inside a zip
  that the package ships (0ad's `public.zip`);
* ``usr/share/games/openttd/baseset/opensfx/opensfx.cat/entry_37.wav``: entry 37
  of an OpenTTD sound catalogue (the RIFF bytes after the entry's text).

Any path containing `farm_animals` is refused before anything is read.
"""

from __future__ import annotations

import os
import re
import struct
import zipfile

from soundloc_tf.realset.rcc import RccFile, refuse_reserved


def split_container(path: str) -> tuple[str, str | None, str | None]:
    """-> (outer path in the package, container kind or None, inner path or None)."""
    refuse_reserved(path)
    if ".rcc:" in path:
        outer, inner = path.split(".rcc:", 1)
        return outer + ".rcc", "rcc", inner
    match = re.match(r"^(.*?\.zip)/(.+)$", path)
    if match:
        return match.group(1), "zip", match.group(2)
    match = re.match(r"^(.*?\.cat)/entry_(\d+)\.wav$", path)
    if match:
        return match.group(1), "cat", match.group(2)
    return path, None, None


def read_opensfx_entry(path: str, index: int) -> tuple[bytes, str]:
    """Entry `index` of an OpenTTD .cat: (its RIFF/WAV bytes, its description text)."""
    with open(path, "rb") as f:
        blob = f.read()
    (first,) = struct.unpack("<I", blob[:4])
    count = (first & 0x7FFFFFFF) // 8
    if not 0 <= index < count:
        raise KeyError(f"the catalogue has {count} entries. Received: entry {index}")
    offset, size = struct.unpack("<II", blob[8 * index:8 * index + 8])
    offset &= 0x7FFFFFFF
    length = blob[offset]
    text = blob[offset + 1:offset + 1 + length].rstrip(b"\0").decode("utf-8", "replace")
    return blob[offset + 1 + length:offset + size], text


class PackageTree:
    """The extracted file tree of one package, with container reading and caching."""

    def __init__(self, root: str):
        self.root = root
        self._rcc: dict[str, RccFile] = {}
        self._zip: dict[str, zipfile.ZipFile] = {}

    def read(self, path: str) -> bytes:
        outer, kind, inner = split_container(path)
        full = os.path.join(self.root, outer)
        if kind is None:
            with open(full, "rb") as f:
                return f.read()
        if kind == "rcc":
            if full not in self._rcc:
                self._rcc[full] = RccFile(full)
            return self._rcc[full].read(inner)
        if kind == "zip":
            if full not in self._zip:
                self._zip[full] = zipfile.ZipFile(full)
            return self._zip[full].read(inner)
        return read_opensfx_entry(full, int(inner))[0]

    def close(self) -> None:
        for z in self._zip.values():
            z.close()
        self._zip.clear()
        self._rcc.clear()
