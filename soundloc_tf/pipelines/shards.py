"""Shards written per key by many workers, committed by one manifest once all are in.

A worker writes the examples of one key (a run of positions) as one part under a name
of that key: a retried or repeated bundle rewrites the same file instead of adding one.
Parts live under a hidden temporary name until `commit_parts` renames them, in key order,
to the names `records.write_shards` gives (`<prefix>-00000-of-00004.tfrecord`). The caller
writes the manifest after that, atomically: a run killed at any point before leaves no
manifest, so no manifest ever lists a shard that is missing, and `clear_leftovers` lets the
rerun start clean.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Any, Iterable

from soundloc_tf.dataloaders import records

PART_PREFIX = ".beam-part"


def part_prefix(prefix: str, key: int) -> str:
    return f"{PART_PREFIX}-{prefix}-{key:06d}"


def write_part(examples: Iterable[bytes], directory: str, prefix: str, key: int
               ) -> dict[str, Any]:
    """Writes one key's serialized examples (already in order) as one part.

    Args:
      examples: the serialized tf.train.Examples of the part, in their stored order.
      directory: the output directory.
      prefix: the final shards' prefix ("data" for records, "features" for a cache).
      key: the part's key; parts are numbered in key order at the commit.

    Returns:
      The manifest entry (file, count, bytes, sha256) with the key.
    """
    entries = records.write_shards(examples, directory, part_prefix(prefix, key),
                                   samples_per_shard=sys.maxsize)
    if len(entries) != 1:
        raise ValueError(f"a part holds at least one example. Received: key={key} with none")
    return {"key": key, **entries[0]}


def commit_parts(directory: str, parts: list[dict[str, Any]], prefix: str
                 ) -> list[dict[str, Any]]:
    """Renames the parts in key order to the final shard names; their manifest entries.

    A rename keeps the bytes, so each part's size and sha256 hold for its shard. A commit
    rerun after a kill between two renames finds the renamed ones in place.
    """
    keys = [part["key"] for part in parts]
    if len(set(keys)) != len(keys):
        raise ValueError(f"each key is written once. Received: keys {sorted(keys)}")
    entries = []
    ordered = sorted(parts, key=lambda part: part["key"])
    for number, part in enumerate(ordered):
        name = f"{prefix}-{number:05d}-of-{len(ordered):05d}.tfrecord"
        written, final = os.path.join(directory, part["file"]), os.path.join(directory, name)
        if os.path.exists(written) or not os.path.exists(final):
            os.replace(written, final)
        entries.append({"file": name, "count": part["count"], "bytes": part["bytes"],
                        "sha256": part["sha256"]})
    return entries


def clear_leftovers(directory: str, prefix: str) -> list[str]:
    """Removes what an interrupted run left in `directory` (parts, uncommitted shards).

    Only for a directory without a manifest: its shards belong to no complete set.

    Returns:
      The removed file names.
    """
    if os.path.exists(os.path.join(directory, records.MANIFEST)):
        raise ValueError(f"the directory already holds records; choose an empty one. "
                         f"Received: directory={directory!r}")
    patterns = (f"{PART_PREFIX}-{prefix}-*", f"{prefix}-[0-9]*-of-[0-9]*.tfrecord",
                ".tmp-*.tfrecord")
    removed = sorted({path for pattern in patterns
                      for path in glob.glob(os.path.join(directory, pattern))})
    for path in removed:
        os.remove(path)
    return [os.path.basename(path) for path in removed]
