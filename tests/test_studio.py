"""soundloc-studio in a real browser: label, train on the labels, localise.

Headless Chromium from Debian (`apt-get install chromium`, as .ci/run does),
driven by Playwright through `executable_path` (no browser download).  The
tests skip, saying why, where chromium or Playwright is missing.

The end-to-end test makes videos, imports them with `soundloc-import
--format=videos`, draws boxes on two frames with mouse events, trains the
tiny model semi-supervised on exactly those two labels, exports it, serves
it with the dev server and localises a frame on the page.  Set
SOUNDLOC_UPDATE_SCREENSHOTS=1 to copy its screenshots over the README's
(docs/images/studio_annotate.png, studio_localize.png).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from soundloc_tf.serving.client import ServingClient
from serving_fixtures import png_bytes, wav_bytes
from soundloc_tf.dataloaders import annotations
from test_import_to_training import BOXES, _write_video

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("SOUNDLOC_CHROMIUM") or shutil.which("chromium") or \
    shutil.which("chromium-browser")
SCREENSHOTS = ROOT / "docs" / "images"
RATE, CLIP = 8000, 1.0  # the tiny preset's audio


def _run(module, *args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        pytest.skip("chromium is not installed (apt-get install --no-install-recommends "
                    "chromium; .ci/run does): the studio's browser tests need it")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Two 2-second videos of a red box and a tone, imported into 4 pairs."""
    pytest.importorskip("av")
    base = tmp_path_factory.mktemp("studio")
    videos = base / "videos"
    videos.mkdir()
    _write_video(videos / "drums.mp4", 2.0, BOXES[0], 500, size=(96, 72))
    _write_video(videos / "bell.mp4", 2.0, BOXES[2], 900, size=(96, 72))
    out = base / "records"
    result = _run("soundloc_tf.tools.import_data",
                  "--format=videos", f"--input={videos}", f"--output={out}",
                  f"--sample_rate={RATE}", f"--clip_seconds={CLIP}", "--pairs_per_clip=2")
    assert result.returncode == 0, result.stderr[-2000:]
    return base, out, videos


def _studio(records_dir, server):
    from soundloc_tf.serving.studio.app import StudioServer

    return StudioServer(str(records_dir), server, port=0, quiet=True)


def _page(browser, url):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(url)
    page.wait_for_function("document.getElementById('progress').textContent.includes('labelled')")
    page.wait_for_function("document.getElementById('boxes').width > 0")
    return page


def _drag(page, start, end, selector="#boxes"):
    """Mouse down at `start`, move in steps, up at `end` (fractions of the canvas)."""
    rect = page.locator(selector).bounding_box()
    at = lambda p: (rect["x"] + p[0] * rect["width"], rect["y"] + p[1] * rect["height"])  # noqa
    page.mouse.move(*at(start))
    page.mouse.down()
    page.mouse.move(*at(end), steps=6)
    page.mouse.up()


def _boxes(page):
    return json.loads(page.locator("#boxes").get_attribute("data-boxes"))


def _message(page, pattern):
    page.wait_for_function(
        "p => new RegExp(p).test(document.getElementById('message').textContent)", arg=pattern)
    return page.locator("#message").text_content()


def _overlay_drawn(page, count):
    page.wait_for_function(
        "n => Number(document.getElementById('overlay').dataset.drawn || 0) >= n", arg=count,
        timeout=120_000)
    canvas = page.locator("#overlay")
    return json.loads(canvas.get_attribute("data-box")), float(canvas.get_attribute("data-score"))


def _keep_screenshot(page, tmp_dir, name):
    path = Path(tmp_dir) / name
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    if os.environ.get("SOUNDLOC_UPDATE_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / name)
    return path


@pytest.mark.slow
def test_label_two_frames_train_on_exactly_them_export_and_localise(browser, imported,
                                                                     tmp_path):
    from soundloc_tf.serving.dev_server import DevServer

    base, records_dir, videos = imported
    port = _free_port()  # the model server comes up on it later: first it is down
    with _studio(records_dir, f"http://127.0.0.1:{port}") as studio:
        ids = studio.app.pairs.ids
        assert len(ids) == 4
        page = _page(browser, studio.url)
        assert page.locator("#progress").text_content() == "0 / 4 labelled"
        page.fill("#who", "tester")

        # The bell clip's pairs come first (sorted paths); its red box is BOXES[2].
        assert ids[0].startswith("bell@") and ids[1].startswith("bell@")
        # Pair 1: two boxes drawn, the second deleted, the deletion undone, the box clicked and
        # deleted again, the first moved right by 0.1 onto the red box, then saved with S.
        _drag(page, (0.4, 0.125), (0.775, 0.5))
        _drag(page, (0.05, 0.6), (0.3, 0.9))
        assert len(_boxes(page)) == 2
        page.keyboard.press("Delete")
        assert len(_boxes(page)) == 1
        page.keyboard.press("u")
        assert len(_boxes(page)) == 2
        _drag(page, (0.15, 0.75), (0.15, 0.75))  # a click selects the box under it
        page.keyboard.press("Delete")
        assert len(_boxes(page)) == 1
        _drag(page, (0.6, 0.3), (0.7, 0.3))
        first = _boxes(page)
        assert len(first) == 1
        np.testing.assert_allclose(first[0], BOXES[2], atol=0.01)
        page.keyboard.press("s")
        _message(page, "Saved pair 1")
        assert page.locator("#progress").text_content() == "1 / 4 labelled"

        # Pair 2: one box; moving on with the arrow key saves it.
        page.keyboard.press("ArrowRight")
        page.wait_for_function("document.getElementById('pair-title').textContent.startsWith('2 /')")
        page.wait_for_function("JSON.parse(document.getElementById('boxes').dataset.boxes).length === 0")
        _drag(page, BOXES[2][:2], BOXES[2][2:])
        second = _boxes(page)
        np.testing.assert_allclose(second, [BOXES[2]], atol=0.01)
        page.keyboard.press("ArrowRight")
        _message(page, "Saved pair 2")
        page.wait_for_function("document.getElementById('pair-title').textContent.startsWith('3 /')")
        assert page.locator("#progress").text_content() == "2 / 4 labelled"

        # The annotation layer holds exactly what was drawn, with who saved it.
        layer = json.loads((records_dir / "annotations.json").read_text())
        assert sorted(layer["labels"]) == sorted(ids[:2])
        for sample_id, drawn in ((ids[0], first), (ids[1], second)):
            label = layer["labels"][sample_id]
            assert label["by"] == "tester" and label["revision"] == 1
            np.testing.assert_allclose(label["boxes"], drawn, atol=1e-4)

        # A reload shows the saved boxes again.
        page.reload()
        page.wait_for_function("document.getElementById('progress').textContent === '2 / 4 labelled'")
        page.wait_for_function("JSON.parse(document.getElementById('boxes').dataset.boxes).length === 1")
        np.testing.assert_allclose(_boxes(page), first, atol=1e-4)
        annotate_png = _keep_screenshot(page, tmp_path, "studio_annotate.png")

        # The model server is not up yet: the page says so.
        page.click("#localize-pair")
        text = _message(page, "did not answer")
        assert f"127.0.0.1:{port}" in text and "soundloc-dev-server" in text

        # Train the tiny model on exactly the two labels, then export it.
        workdir, exports = tmp_path / "run", tmp_path / "exports"
        train = _run("soundloc_tf.tools.train", "--preset=tiny", f"--workdir={workdir}",
                     f"--records={records_dir}",
                     f"--annotations={records_dir / 'annotations.json'}",
                     "--train_steps=2", "--batch_size=4", "--eval_every=100",
                     "--checkpoint_every=2", "--num_summary_images=0", "--log_every=1")
        assert train.returncode == 0, train.stderr[-3000:]
        assert "Semi-supervised on 2 labelled pairs of 4 (annotation layer" in train.stdout
        supervised = [float(v) for v in re.findall(r"supervised (\d+\.\d+)\)", train.stdout)]
        assert len(supervised) == 2 and max(supervised) > 0, train.stdout
        export = _run("soundloc_tf.tools.export",
                      f"--workdir={workdir}", f"--export_base={exports}")
        assert export.returncode == 0, export.stderr[-3000:]

        with DevServer(str(exports / "soundloc"), port=port, quiet=True) as model:
            page.click("#tab-annotate")
            page.keyboard.press("ArrowLeft")  # pair 1 was shown after the reload
            page.click("#localize-pair")
            box, score = _overlay_drawn(page, 1)
            image, _ = studio.app.pairs.image(0)
            direct = ServingClient(model.url).localize([image], [studio.app.pairs.sound(0)])[0]
            assert score == pytest.approx(direct["score"], abs=1e-6)
            np.testing.assert_allclose(box, direct["box"], atol=1e-5)
            assert page.locator("#score").text_content() == f"score {direct['score']:.3f}"
            localize_png = _keep_screenshot(page, tmp_path, "studio_localize.png")

            # One click: the same frame with another clip's sound.
            page.click("#mismatch")
            box, mismatched = _overlay_drawn(page, 2)
            other = studio.app.pairs.mismatched(0)
            assert studio.app.pairs.clip_of(other) != studio.app.pairs.clip_of(0)
            assert f"sound of pair {other + 1}" in page.locator("#loc-status").text_content()
            expected = ServingClient(model.url).localize(
                [image], [studio.app.pairs.sound(other)])[0]["score"]
            assert mismatched == pytest.approx(expected, abs=1e-6)

            # Dropped files: an image and a sound.
            rng = np.random.default_rng(1)
            (tmp_path / "scene.png").write_bytes(
                png_bytes(rng.integers(0, 255, [60, 80, 3], dtype=np.uint8)))
            tone = 0.3 * np.sin(2 * np.pi * 500 * np.arange(RATE) / RATE)
            (tmp_path / "tone.wav").write_bytes(wav_bytes(tone, RATE))
            page.set_input_files("#files", [str(tmp_path / "scene.png"),
                                            str(tmp_path / "tone.wav")])
            box, score = _overlay_drawn(page, 3)
            direct = ServingClient(model.url).localize(
                [(tmp_path / "scene.png").read_bytes()], [(tmp_path / "tone.wav").read_bytes()])[0]
            assert score == pytest.approx(direct["score"], abs=1e-6)
            np.testing.assert_allclose(box, direct["box"], atol=1e-5)

            # A video: sampled every 0.5 s; scrubbing moves the overlay to another moment.
            page.set_input_files("#files", str(videos / "drums.mp4"))
            _overlay_drawn(page, 4)
            assert page.locator("#scrub").get_attribute("max") == "3"
            assert float(page.locator("#overlay").get_attribute("data-time")) == \
                pytest.approx(0.25, abs=0.01)
            page.evaluate("""() => { const s = document.getElementById('scrub');
                                     s.value = '2'; s.dispatchEvent(new Event('input')); }""")
            page.wait_for_function(
                "Math.abs(Number(document.getElementById('overlay').dataset.time) - 1.25) < 0.01")

            # Bad input: a file of an unsupported type; an "image" that is not one.
            (tmp_path / "notes.txt").write_text("not media")
            page.set_input_files("#files", str(tmp_path / "notes.txt"))
            assert '"notes.txt"' in _message(page, "Unsupported file")
            (tmp_path / "broken.png").write_bytes(b"this is not a PNG file")
            page.set_input_files("#files", [str(tmp_path / "broken.png"),
                                            str(tmp_path / "tone.wav")])
            assert "'broken.png' is not an image" in _message(page, "Not localised")
        page.close()
    assert annotate_png.exists() and localize_png.exists()


@pytest.mark.slow
def test_two_tabs_saving_one_pair_and_a_corrupt_file_lose_no_label(browser, imported, tmp_path,
                                                                   monkeypatch):
    _, records_dir, _ = imported
    copy = tmp_path / "records"
    shutil.copytree(records_dir, copy, ignore=shutil.ignore_patterns("annotations.json*"))
    path = copy / "annotations.json"
    with _studio(copy, "http://127.0.0.1:9") as studio:
        one, two = _page(browser, studio.url), _page(browser, studio.url)
        for page in (one, two):
            page.fill("#who", "tab-one" if page is one else "tab-two")
        _drag(one, (0.1, 0.1), (0.5, 0.5))
        one.click("#save")
        _message(one, "Saved pair 1")
        _drag(two, (0.5, 0.5), (0.9, 0.9))
        two.click("#save")
        text = _message(two, "Not saved")
        assert "saved in another tab" in text and "by tab-one" in text
        label = annotations.load(str(path))["labels"][studio.app.pairs.ids[0]]
        assert label["by"] == "tab-one" and label["revision"] == 1  # the first save survives
        np.testing.assert_allclose(label["boxes"], [[0.1, 0.1, 0.5, 0.5]], atol=0.01)
        # Having seen the message, tab two replaces it on purpose.
        two.click("#save")
        _message(two, "Saved pair 1 .*revision 2")
        label = annotations.load(str(path))["labels"][studio.app.pairs.ids[0]]
        assert label["by"] == "tab-two" and label["revision"] == 2

        # Saves of different pairs from the two tabs merge.
        one.keyboard.press("ArrowRight")
        one.wait_for_function("document.getElementById('pair-title').textContent.startsWith('2 /')")
        _drag(one, (0.2, 0.2), (0.4, 0.4))
        one.click("#save")
        _message(one, "Saved pair 2")
        assert len(annotations.load(str(path))["labels"]) == 2

        # Pair 3: "no visible source" with the N key (it clears the boxes), saved; P plays the
        # pair's 1-second sound.
        one.keyboard.press("ArrowRight")
        one.wait_for_function("document.getElementById('pair-title').textContent.startsWith('3 /')")
        _drag(one, (0.2, 0.2), (0.4, 0.4))
        one.keyboard.press("n")
        assert _boxes(one) == [] and one.locator("#no-source").is_checked()
        one.keyboard.press("s")
        _message(one, "Saved pair 3")
        assert one.locator("#progress").text_content() == "3 / 4 labelled"
        label = annotations.load(str(path))["labels"][studio.app.pairs.ids[2]]
        assert label["no_source"] is True and label["boxes"] == []
        one.keyboard.press("p")
        one.wait_for_function("!document.getElementById('sound').paused || "
                              "document.getElementById('sound').ended")
        assert one.evaluate("document.getElementById('sound').duration") == pytest.approx(1.0)

        # A save that fails on the disk (the fsync of the new file) changes nothing.
        before = path.read_bytes()

        def full_disk(fd):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", full_disk)
        one.keyboard.press("ArrowLeft")
        one.wait_for_function("document.getElementById('pair-title').textContent.startsWith('2 /')")
        _drag(one, (0.6, 0.6), (0.9, 0.9))
        one.click("#save")
        assert "No space left on device" in _message(one, "Not saved")
        monkeypatch.undo()
        assert path.read_bytes() == before
        assert not [p for p in copy.iterdir() if p.name.endswith(".tmp")]

        # A corrupt file is shown on the page and never overwritten.
        corrupt = path.read_bytes()[:-30]
        path.write_bytes(corrupt)
        one.reload()
        assert "corrupt annotation file" in _message(one, "corrupt")
        _drag(one, (0.6, 0.6), (0.8, 0.8))
        one.click("#save")
        assert "kept as it is" in _message(one, "Not saved")
        assert path.read_bytes() == corrupt
        one.close()
        two.close()


def test_studio_program_reports_bad_records_in_one_line(tmp_path):
    result = _run("soundloc_tf.tools.studio", f"--records={tmp_path / 'nothing'}", timeout=120)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "must be a record directory" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_the_localise_side_knows_the_model_only_through_rest():
    code = ("import sys; import soundloc_tf.serving.studio.localize\n"
            "import soundloc_tf.serving.studio.app\n"
            "print(sorted(m for m in sys.modules if m.startswith('soundloc_tf.') and m.split('.')[1]"
            " in ('training', 'export', 'models', 'losses', 'evaluation', 'feature_cache')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
