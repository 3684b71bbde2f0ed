"""The Beam import and cache build at 1 and 2 local workers, and what that projects to.

  python benchmarks/beam_scaling.py --output=results/beam_scaling.json

Needs the `beam` extra (its own venv, docs/BEAM.md). One run measures, on the Python
FnApiRunner in multi-process mode (nothing downloaded):
  - video import: records/s of `soundloc-import --format=videos` over generated clips
    (PyAV decode, soxr resample, JPEG encode), one process as today, then 1 and 2 workers;
  - cache build: samples/s of the paper preset's frozen towers (VGG16 at 320, YAMNet,
    random weights: the cost is the same) over imported records, `write_cache` in one
    process with every core, then 1 and 2 workers of one TensorFlow thread each (one
    worker per core, as Dataflow runs Python workers);
and prints a table of hours for 144k, 200k and 2M clips on 1, 8 and 64 workers from the
per-element costs measured on one worker and the 2-worker efficiency. Walls include each
pipeline's start (worker processes, model build): the figures are a floor for long runs.
Not a timed test: the machine's other load is recorded (load average) beside the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time

# One TensorFlow thread per worker process (read when TensorFlow starts in each worker);
# the one-process baselines run in this process, whose TensorFlow starts with every core.
TOWER_THREADS = "1"
CLIPS = (("Flickr-SoundNet", 144_000), ("VGGSound", 200_000), ("AudioSet", 2_000_000))
WORKERS = (1, 8, 64)
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                     "amx_int8", "amx_tile")


def cpu_description() -> dict:
    """The CPU model, core count and the vector flags that decide the towers' kernels."""
    model, flags = platform.processor(), set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {"model": model, "cores": os.cpu_count(),
            "flags": [f for f in INTERESTING_FLAGS if f in flags]}


def load_average() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def write_videos(root: str, count: int, seconds: float) -> None:
    """`count` 320x240 clips at 25 fps with an AAC tone: a moving bar, a tone per clip."""
    import av
    import numpy as np

    os.makedirs(root, exist_ok=True)
    fps, rate = 25, 44100
    for n in range(count):
        with av.open(os.path.join(root, f"clip{n:04d}.mp4"), "w") as container:
            video = container.add_stream("mpeg4", rate=fps)
            video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
            audio = container.add_stream("aac", rate=rate, layout="mono")
            for i in range(int(seconds * fps)):
                image = np.full([240, 320, 3], 60 + n % 100, np.uint8)
                image[:, (i * 8) % 320:(i * 8) % 320 + 40] = (230, 30, 30)
                for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in video.encode():
                container.mux(packet)
            t = np.arange(int(seconds * rate)) / rate
            tone = (0.3 * np.sin(2 * np.pi * (200 + 10 * n) * t)).astype(np.float32)
            for i in range(0, len(tone), 1024):
                frame = av.AudioFrame.from_ndarray(tone[None, i:i + 1024], format="fltp",
                                                   layout="mono")
                frame.rate = rate
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)


def local_args(workers: int) -> list[str]:
    return ["--runner=DirectRunner", f"--direct_num_workers={workers}",
            "--direct_running_mode=multi_processing"]


def measure_import(work: str, videos: int, seconds: float) -> dict:
    """records/s of the video import: one process, then Beam on 1 and 2 workers."""
    from soundloc_tf.dataloaders import importers
    from soundloc_tf.pipelines import beam_import, elements

    root = os.path.join(work, "videos")
    write_videos(root, videos, seconds)
    settings = elements.ImportSettings("videos", root, 22050, 10.0)
    rates = {}
    started = time.perf_counter()
    report, _ = importers.run_import("videos", root, os.path.join(work, "import_one"),
                                     sample_rate=22050, clip_seconds=10.0,
                                     progress=io.StringIO())
    rates["one_process"] = report.imported / (time.perf_counter() - started)
    for workers in (1, 2):
        started = time.perf_counter()
        report, _ = beam_import.run_beam_import(settings, os.path.join(work, f"import_{workers}"),
                                                local_args(workers))
        rates[f"beam_{workers}"] = report.imported / (time.perf_counter() - started)
    return {"records": report.imported, "clip_seconds_of_video": seconds,
            "records_per_s": rates, "load_average_after": load_average()}


def measure_cache(work: str, samples: int) -> dict:
    """samples/s of the paper towers' cache: write_cache, then Beam on 1 and 2 workers."""
    import keras

    from soundloc_tf.config import get_config
    from soundloc_tf.dataloaders import data, records
    from soundloc_tf.modeling.models import build_model
    from soundloc_tf.pipelines import beam_cache
    from soundloc_tf.train import feature_cache

    config = get_config("paper", image_weights="none", audio_weights="none",
                        freeze_image_tower=True, freeze_audio_tower=True)
    source = os.path.join(work, "cache_records")
    scenes = [{k: v.numpy() for k, v in e.items()} | {"sample_rate": config.sample_rate}
              for e in data.synthetic_dataset(config, 0, count=samples)]
    records.write_records(scenes, source, sample_rate=config.sample_rate,
                          clip_seconds=config.num_samples / config.sample_rate,
                          source="synthetic", samples_per_shard=max(samples // 8, 1))
    keras.utils.set_random_seed(0)
    model = build_model(config)
    rates = {}
    started = time.perf_counter()
    feature_cache.write_cache(model, config,
                              records.read_records(config, source, training=False),
                              os.path.join(work, "cache_one"))
    rates["one_process_all_cores"] = samples / (time.perf_counter() - started)
    for workers in (1, 2):
        started = time.perf_counter()
        beam_cache.run_beam_cache(model, config, source, os.path.join(work, f"cache_{workers}"),
                                  local_args(workers))
        rates[f"beam_{workers}"] = samples / (time.perf_counter() - started)
    return {"samples": samples, "preset": "paper", "samples_per_s": rates,
            "load_average_after": load_average()}


def projection(per_s_one_worker: float, efficiency: float) -> dict[str, dict[str, float]]:
    """Hours per data set and worker count: clips / (workers x one worker's rate x
    efficiency); one worker runs at its measured rate (efficiency 1)."""
    return {name: {str(w): round(n / (per_s_one_worker * w * (efficiency if w > 1 else 1.0))
                                 / 3600, 2) for w in WORKERS}
            for name, n in CLIPS}


def table(title: str, hours: dict[str, dict[str, float]]) -> str:
    lines = [title, f"  {'clips':<24}" + "".join(f"{f'{w} workers':>14}" for w in WORKERS)]
    for (name, n) in CLIPS:
        lines.append(f"  {f'{name} {n:,}':<24}" + "".join(f"{hours[name][str(w)]:>12.1f} h"
                                                          for w in WORKERS))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="results/beam_scaling.json")
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--video_seconds", type=float, default=10.0)
    parser.add_argument("--cache_samples", type=int, default=48)
    args = parser.parse_args()
    if min(args.videos, args.cache_samples) < 2 or args.video_seconds <= 0:
        parser.error(f"need at least 2 videos and samples of positive length. Received: "
                     f"videos={args.videos}, cache_samples={args.cache_samples}, "
                     f"video_seconds={args.video_seconds}")
    import tensorflow as tf

    # This process's TensorFlow starts now, with every core (the one-process baselines);
    # the worker processes start theirs later, reading the thread counts set here.
    _ = tf.zeros([1]) + 1
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = TOWER_THREADS
    result = {"cpu": cpu_description(), "load_average_before": load_average(),
              "tf_threads_per_worker": int(TOWER_THREADS),
              "runner": "DirectRunner (FnApiRunner), direct_running_mode=multi_processing"}
    work = tempfile.mkdtemp(prefix="beam_scaling_")
    try:
        result["import"] = measure_import(work, args.videos, args.video_seconds)
        result["cache"] = measure_cache(work, args.cache_samples)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"CPU: {result['cpu']['model']}, {result['cpu']['cores']} cores, flags "
             f"{' '.join(result['cpu']['flags'])}; load average before "
             f"{result['load_average_before']}"]
    for stage, unit in (("import", "records_per_s"), ("cache", "samples_per_s")):
        rates = result[stage][unit]
        ratio = rates["beam_2"] / rates["beam_1"]
        result[stage]["two_over_one_worker"] = round(ratio, 3)
        result[stage]["projection_hours"] = projection(rates["beam_1"], ratio / 2)
        lines.append(f"{stage}: " + ", ".join(f"{k} {v:.2f}/s" for k, v in rates.items())
                     + f"; 2 workers / 1 worker = {ratio:.2f}x; load average after "
                     f"{result[stage]['load_average_after']}")
        lines.append(table(f"{stage}: hours at one worker's measured cost, {ratio / 2:.0%} "
                           f"efficiency past one worker", result[stage]["projection_hours"]))
    result["assumptions"] = (
        "one record per clip (pairs_per_clip=1) and one cache sample per record; a worker "
        "is one core with one TensorFlow thread, as measured here; the efficiency per extra "
        "worker stays that of 2 local workers (a cluster adds no shared-CPU contention but "
        "adds reading from shared storage, not measured); pipeline start-up and the final "
        "commit are left out of the hours (they are in the measured rates).")
    lines.append("assumptions: " + result["assumptions"])
    print("\n".join(lines))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
