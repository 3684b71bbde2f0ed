"""The frame/sound pairs of a record directory, read one at a time for the page.

The shards are indexed once (the offset of each record, by id) by walking the
TFRecord framing; a pair is parsed only when the page asks for it, so a large
directory costs an index, not its images in memory.
"""

from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np

from soundloc_tf import wav_encode
from soundloc_tf.dataloaders import records


@dataclasses.dataclass(frozen=True)
class _Entry:
    sample_id: str
    file: str
    offset: int
    length: int


def _scan(path: str) -> list[tuple[int, int]]:
    """(offset, length) of every record payload in one TFRecord file.

    Framing: uint64 length, uint32 masked CRC of the length, the payload, uint32
    masked CRC of the payload.  The shard's sha256 was checked against the manifest
    before this runs, so the CRCs are not recomputed; a length past the end of the file
    (a damaged shard under a re-signed manifest) is refused before anything is read.
    """
    out = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        position = 0
        while position < size:
            header = f.read(12)
            if len(header) != 12:
                raise ValueError(f"truncated TFRecord header at byte {position}. Received: "
                                 f"{path!r}")
            (length,) = struct.unpack("<Q", header[:8])
            if position + 12 + length + 4 > size:
                raise ValueError(f"corrupt TFRecord: the record at byte {position} claims "
                                 f"{length} bytes, past the end of the {size}-byte file. "
                                 f"Received: {path!r}")
            out.append((position + 12, length))
            position += 12 + length + 4
            f.seek(position)
    return out


def wav_bytes(waveform: np.ndarray, sample_rate: int) -> bytes:
    """Mono float samples -> 16-bit PCM WAV (what browsers play and the model reads)."""
    peak = float(np.max(np.abs(waveform), initial=0.0))
    # Keep the level unless it clips.
    return wav_encode.wav_bytes(waveform / peak if peak > 1.0 else waveform, sample_rate)


class RecordPairs:
    """The pairs of one record directory, in file order.

    Args:
        directory: a record directory (manifest.json and shards); its shards are
            verified against the manifest first, so the page never shows a corrupt pair.
    """

    def __init__(self, directory: str):
        from tensorflow.core.example import example_pb2  # protobuf only, no graph

        self._example = example_pb2.Example
        if not os.path.isdir(directory):  # a shard pattern, too: labels go beside a directory
            raise ValueError(f"records must be a record directory (made by soundloc-import). "
                             f"Received: {directory!r}")
        self.record_set = records.resolve(os.fspath(directory))
        records.verify_shards(self.record_set)
        self.directory = self.record_set.directory
        manifest = self.record_set.manifest
        self.sample_rate = int(manifest["features"]["sample_rate"])
        self.clip_seconds = float(manifest["features"]["clip_seconds"])
        self.audio_dtype = manifest["features"].get("audio_dtype", "int16")
        self.identity = {"count": int(manifest["count"]), "created": manifest.get("created", ""),
                         "source": manifest.get("source", "")}
        self.entries: list[_Entry] = []
        for path in self.record_set.files:
            with open(path, "rb") as f:
                for offset, length in _scan(path):
                    f.seek(offset)
                    self.entries.append(_Entry(self._sample_id(f.read(length), path, offset),
                                               path, offset, length))
        self.ids = [e.sample_id for e in self.entries]
        self.index = {sample_id: i for i, sample_id in enumerate(self.ids)}

    def _sample_id(self, payload: bytes, path: str, offset: int) -> str:
        from google.protobuf.message import DecodeError

        try:
            return self._example.FromString(payload).features.feature["id"].bytes_list \
                .value[0].decode()
        except (DecodeError, IndexError, UnicodeDecodeError) as error:
            raise ValueError(f"corrupt TFRecord: the record at byte {offset - 12} is not a "
                             f"soundloc example with an id ({type(error).__name__}). "
                             f"Received: {path!r}") from None

    def __len__(self) -> int:
        return len(self.entries)

    def _features(self, position: int):
        if not 0 <= position < len(self.entries):
            raise IndexError(f"no pair {position}; the records hold {len(self.entries)}")
        entry = self.entries[position]
        with open(entry.file, "rb") as f:
            f.seek(entry.offset)
            return self._example.FromString(f.read(entry.length)).features.feature

    def image(self, position: int) -> tuple[bytes, str]:
        """The frame as stored (JPEG or PNG bytes) and its MIME type."""
        data = self._features(position)["image"].bytes_list.value[0]
        return data, "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"

    def waveform(self, position: int) -> np.ndarray:
        feature = self._features(position)
        raw = feature["audio"].bytes_list.value[0]
        if self.audio_dtype == "float32":
            return np.frombuffer(raw, "<f4").astype(np.float32)
        scale = feature["audio_scale"].float_list.value
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32767.0 * (scale[0] if scale else 1.0)

    def sound(self, position: int) -> bytes:
        """The pair's sound as a WAV file."""
        return wav_bytes(self.waveform(position), self.sample_rate)

    def boxes(self, position: int) -> list[list[float]]:
        """The boxes the records hold (an import's labels, shown as a starting point)."""
        flat = list(self._features(position)["boxes"].float_list.value)
        return [flat[i:i + 4] for i in range(0, len(flat), 4)]

    def clip_of(self, position: int) -> str:
        """The clip a pair was cut from (`stem@time` for videos), to pick another clip's
        sound as the mismatched one."""
        sample_id = self.ids[position]
        return sample_id.split("@", 1)[0] if "@" in sample_id else sample_id.rsplit("/", 1)[0]

    def mismatched(self, position: int) -> int:
        """The first pair after `position` (wrapping) from another clip; another pair of the
        same clip when every pair shares one."""
        count = len(self.entries)
        for step in range(1, count):
            other = (position + step) % count
            if self.clip_of(other) != self.clip_of(position):
                return other
        if count < 2:
            raise ValueError("the records hold one pair: there is no other sound to try")
        return (position + 1) % count
