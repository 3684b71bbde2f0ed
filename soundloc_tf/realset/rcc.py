"""A reader for Qt binary resource files (`.rcc`), as GCompris ships its activities.

Only what the realset builder needs: list the files of an `.rcc` and read one.
Any path containing `farm_animals` (the GCompris activity reserved for
evaluation) is refused before anything is opened or read.
"""

from __future__ import annotations

import struct
import zlib

RESERVED = "farm_animals"

_DIRECTORY = 0x02
_COMPRESSED = 0x01
_COMPRESSED_ZSTD = 0x04


class ReservedPathError(ValueError):
    """A path that names the reserved GCompris activity."""


def refuse_reserved(path: str) -> None:
    """Raises ReservedPathError for any path containing `farm_animals`."""
    if RESERVED in str(path).lower():
        raise ReservedPathError(f"refused: {path!r} names the reserved GCompris activity "
                                f"({RESERVED}); it is never opened")


class RccFile:
    """Files of one Qt resource file, keyed by their resource path ("/a/b/c.webp")."""

    def __init__(self, path: str):
        refuse_reserved(path)
        with open(path, "rb") as f:
            self.blob = f.read()
        blob = self.blob
        if blob[:4] != b"qres":
            raise ValueError(f"not a Qt resource file (no 'qres' magic). Received: {path!r}")
        self.version, self.tree, self.data, self.names = struct.unpack(">4I", blob[4:20])
        self.node_size = 14 if self.version == 1 else 22
        self.entries: dict[str, tuple[int, int]] = {}
        self._walk(0, "")

    def _name(self, offset: int) -> str:
        at = self.names + offset
        (length,) = struct.unpack(">H", self.blob[at:at + 2])
        return self.blob[at + 6:at + 6 + 2 * length].decode("utf-16-be")

    def _walk(self, index: int, prefix: str) -> None:
        at = self.tree + index * self.node_size
        name_offset, flags = struct.unpack(">IH", self.blob[at:at + 6])
        name = "" if index == 0 else self._name(name_offset)
        path = f"{prefix}/{name}" if index else ""
        if RESERVED in path.lower():
            return  # never descended into, never read
        if flags & _DIRECTORY:
            count, first = struct.unpack(">II", self.blob[at + 6:at + 14])
            for child in range(first, first + count):
                self._walk(child, path)
        else:
            (data_offset,) = struct.unpack(">I", self.blob[at + 10:at + 14])
            self.entries[path] = (data_offset, flags)

    def list(self) -> list[str]:
        return sorted(self.entries)

    def read(self, path: str) -> bytes:
        refuse_reserved(path)
        if not path.startswith("/"):
            path = "/" + path
        if path not in self.entries:
            raise KeyError(f"no such resource in the .rcc. Received: {path!r}")
        offset, flags = self.entries[path]
        at = self.data + offset
        (size,) = struct.unpack(">I", self.blob[at:at + 4])
        raw = self.blob[at + 4:at + 4 + size]
        if flags & _COMPRESSED:
            return zlib.decompress(raw[4:])
        if flags & _COMPRESSED_ZSTD:
            import zstandard  # only if a file needs it

            return zstandard.ZstdDecompressor().decompress(raw)
        return raw
