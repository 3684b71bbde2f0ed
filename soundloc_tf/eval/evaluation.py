"""Runs a model over a dataset and scores its maps (cIoU, AUC, pointing game, and more).

`evaluate` is the protocol every number of this project goes through:

  * the headline: cIoU@0.5, mean cIoU, AUC and pointing game on the
    attention map alpha, with one binarising rule (see `metrics`), beside the
    whole-image, centre-box and random-box baselines;
  * the raw cosine map scored the same way;
  * the audio-dependence gap: the same metrics with every image paired with
    a mismatched sound (`MISMATCH_DEFINITION`), and matched - mismatched;
  * optionally all three binarising rules, per-class results, where the map
    peak falls (sounding object, context cue, distractors) and negative audio
    (`soundloc_tf.dataloaders.negatives`);
  * the protocol of the headline numbers (`soundloc_tf.protocols`): soundloc's
    `fixed` rule or a peer's (lvs, ezvsl, slavc, vssl_eval), and with
    `all_rules` every protocol's numbers (`by_protocol`), with negatives also
    SLAVC's AP/F1/precision and vssl_eval's pIA/AOC (`negatives_by_protocol`).
    Baselines, the cosine map, the mismatched sound and the rules of
    `by_rule` stay in soundloc's frame (`metrics`).

The model runs in two passes that share one image-tower evaluation per image:
first the audio tower over every clip (cheap, and needed before any image
can be paired with a later scene's sound), then the image tower once per
batch with the localiser applied to every sound set.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from soundloc_tf import losses, metrics, protocols
from soundloc_tf.dataloaders import negatives
from soundloc_tf.config import Config
from soundloc_tf.modeling.models import Towers, split_model

EVAL_BATCH = 32
MISMATCH_DEFINITION = (
    "image i is paired with the clip of scene j, the first later scene (cyclically, in "
    "evaluation order) whose sounding class differs from image i's sounding class")
MISMATCH_FALLBACK_DEFINITION = (
    "class ids unknown or all equal: image i is paired with the clip of scene (i + n // 2) mod n, "
    "another clip whose class may match (used when no image has a scene of another class)")
_EXTRA_KEYS = ("object_boxes", "object_classes", "cue_box", "cue_class")


def predict_maps(model: keras.Model, dataset: tf.data.Dataset, mismatched: bool = False,
                 progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Collects attention/cosine maps, scores and boxes over a batched dataset.

    With `mismatched`, image i is paired with the sound of image i+1 of the
    same batch (a quick check for training summaries; `evaluate` pairs by class).
    """
    @tf.function
    def run(batch):
        waveform = batch["waveform"]
        if mismatched:
            waveform = tf.roll(waveform, shift=-1, axis=0)
        out = model({"image": batch["image"], "waveform": waveform}, training=False)
        return out["attention"], out["cosine"], out["score"]

    collected: dict[str, list] = {"attention": [], "cosine": [], "score": [], "boxes": [],
                                  "class_id": []}
    done = 0
    for batch in dataset:
        attention, cosine, score = run(batch)
        for key, value in (("attention", attention), ("cosine", cosine), ("score", score),
                           ("boxes", batch["boxes"]), ("class_id", batch["class_id"])):
            collected[key].append(value.numpy())
        done += len(score)
        if progress:
            progress(done)
    if done == 0:
        raise ValueError("the evaluation dataset is empty")
    return {k: np.concatenate(v) for k, v in collected.items()}


# ---------------------------------------------------------------------------
# The two passes.


def audio_features(towers: Towers, waveforms: np.ndarray | tf.Tensor) -> np.ndarray:
    """Audio-tower outputs [N, D] of waveforms [N, samples]."""
    return towers.audio(tf.convert_to_tensor(waveforms, tf.float32), training=False).numpy()


def _audio_pass(towers: Towers, batched: tf.data.Dataset, noise_seed: int | None
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Audio features of every clip (and of white noise, when noise_seed is set), and labels."""
    run = tf.function(lambda w: towers.audio(w, training=False), reduce_retracing=True)
    features: dict[str, list] = {"matched": [], "white_noise": []}
    info: dict[str, list] = {}
    done = 0
    for batch in batched:
        count = int(batch["waveform"].shape[0])
        features["matched"].append(run(batch["waveform"]).numpy())
        if noise_seed is not None:
            noise = negatives.white_noise(np.arange(done, done + count),
                                          int(batch["waveform"].shape[1]), noise_seed)
            features["white_noise"].append(run(tf.constant(noise)).numpy())
        for key in ("boxes", "class_id", "id", *_EXTRA_KEYS):
            if key in batch:
                info.setdefault(key, []).append(batch[key].numpy())
        done += count
    if done == 0:
        raise ValueError("the evaluation dataset is empty")
    return ({k: np.concatenate(v) for k, v in features.items() if v},
            {k: np.concatenate(v) for k, v in info.items()})


def _localize_pass(towers: Towers, batched: tf.data.Dataset, sound_sets: dict[str, np.ndarray],
                   ids: np.ndarray, progress: Callable[[int], None] | None
                   ) -> dict[str, dict[str, np.ndarray]]:
    """Maps and scores of every image with every sound set's features [N, D]."""
    image_run = tf.function(lambda x: towers.image(x, training=False), reduce_retracing=True)

    @tf.function(reduce_retracing=True)
    def localize(visual, feature):
        out = towers.localizer([visual, feature], training=False)
        return out["attention"], out["cosine"], out["score"]

    collected = {name: {"attention": [], "cosine": [], "score": []} for name in sound_sets}
    done = 0
    for batch in batched:
        count = int(batch["image"].shape[0])
        if not np.array_equal(batch["id"].numpy(), ids[done:done + count]):
            raise ValueError("the evaluation dataset must yield the same elements in the same "
                             "order on every pass (no shuffling). Received: a different id at "
                             f"position {done}")
        visual = image_run(batch["image"])
        for name, features in sound_sets.items():
            outputs = localize(visual, tf.constant(features[done:done + count]))
            for key, value in zip(("attention", "cosine", "score"), outputs):
                collected[name][key].append(value.numpy())
        done += count
        if progress:
            progress(done)
    return {name: {k: np.concatenate(v) for k, v in values.items()}
            for name, values in collected.items()}


# ---------------------------------------------------------------------------
# Scoring.


@dataclasses.dataclass
class EvaluationDetails:
    """Per-image arrays behind a result, for plots and further analysis."""

    ciou: np.ndarray  # [N], headline rule, attention map
    pointing: np.ndarray  # [N] 0/1
    class_id: np.ndarray  # [N], -1 unknown
    attention: np.ndarray  # [N, h, w]
    boxes: np.ndarray  # [N, annotators, boxes, 4]
    curves: dict[str, np.ndarray]  # per-image cIoU of the model and each baseline
    confidences: dict[str, dict[str, np.ndarray]] | None = None  # kind -> confidence -> [M]


def _score(maps: np.ndarray, gt: np.ndarray, rule: str, threshold: float
           ) -> tuple[dict, np.ndarray, np.ndarray]:
    """Summary, per-image cIoU and pointing hits of maps already normalised to the gt frame."""
    per_image = metrics.ciou(metrics.binarize(maps, rule, threshold), gt)
    hits = metrics.pointing_hits(maps, gt)
    return metrics.summarize(per_image, hits), per_image, hits


def mismatch_partners(class_ids: np.ndarray) -> tuple[np.ndarray, str]:
    """The mismatched-sound partner of each image (-1: none), and how it was chosen."""
    class_ids = np.asarray(class_ids)
    if (class_ids >= 0).any():
        partners = negatives.partner_indices(class_ids)
        if (partners >= 0).any():
            return partners, MISMATCH_DEFINITION
    n = len(class_ids)
    partners = (np.arange(n) + n // 2) % n if n >= 2 else np.full(n, -1)
    return partners, MISMATCH_FALLBACK_DEFINITION


def group_ids(classes: Sequence[str], groups: dict[str, str] | None) -> list[int] | None:
    """Group id per class id from class names and a name -> group mapping (records' manifests)."""
    if not classes or not groups:
        return None
    names = sorted({groups.get(c, c) for c in classes})
    return [names.index(groups.get(c, c)) for c in classes]


def _groups_of(class_ids: np.ndarray, class_groups: Sequence[int] | None) -> np.ndarray:
    """Class ids mapped to group ids (-1 stays -1); the ids themselves without groups."""
    if class_groups is None:
        return class_ids
    table = np.asarray(class_groups, np.int64)
    known = class_ids >= 0
    if known.any() and class_ids[known].max() >= len(table):
        raise ValueError(f"class_groups must give a group for every class id. Received: "
                         f"{len(table)} groups, class id {int(class_ids[known].max())}")
    return np.where(known, table[np.where(known, class_ids, 0)], -1)


def has_boxes(boxes: np.ndarray | tf.Tensor) -> np.ndarray:
    """[N, annotators, boxes, 4] -> bool [N]: pairs with at least one non-empty box."""
    return losses.valid_annotators(tf.convert_to_tensor(boxes)).numpy().any(axis=1)


def is_annotated(element: dict) -> tf.Tensor:
    """Whether one (unbatched) element has a box: a tf.data filter predicate."""
    return tf.reduce_any(losses.valid_annotators(element["boxes"][None]))


def matched_samples(dataset: tf.data.Dataset) -> int:
    """Samples per clip of a dataset of the common element spec."""
    length = dataset.element_spec["waveform"].shape[-1]
    if length is None:
        raise ValueError("the dataset's waveforms must have a static length. Received: "
                         f"{dataset.element_spec['waveform']}")
    return int(length)


def _grouped_partners(class_ids: np.ndarray, class_groups: Sequence[int] | None
                      ) -> tuple[np.ndarray, np.ndarray, str]:
    """Each image's class group, its mismatched-sound partner (-1: none) and how the
    partners were chosen (`mismatch_partners`, on the groups).

    Args:
      class_ids: each image's class id (-1: unknown).
      class_groups: the group of each class, or None (each class its own group).
    """
    groups = _groups_of(class_ids, class_groups)
    partners, partner_definition = mismatch_partners(groups)
    if class_groups is not None:
        partner_definition += " (compared by class group)"
    return groups, partners, partner_definition


def _breakdowns(result: dict, attention: np.ndarray, gt: np.ndarray, threshold: float,
                all_rules: bool, per_image: np.ndarray, hits: np.ndarray,
                class_ids: np.ndarray, peak_location: dict | None) -> None:
    """Puts the optional breakdowns in `result`: every binarising rule (with `all_rules`),
    per class (when class ids are known) and where the peaks fall (scenes with a cue).

    Args:
      result: updated in place.
      attention: the matched sound's attention maps, normalised to soundloc's frame.
      gt: the consensus maps in that frame.
      threshold: the `fixed` rule's threshold.
      all_rules: also score every rule (`by_rule`).
      per_image, hits: the headline per-image cIoU and pointing hits.
      class_ids: each image's class id (-1: unknown).
      peak_location: `_peak_location`'s report, or None.
    """
    if all_rules:
        result["by_rule"] = {other: {**_score(attention, gt, other, threshold)[0],
                                     "threshold": threshold if other == "fixed" else None}
                             for other in metrics.BINARIZE_RULES}
    if (class_ids >= 0).any():
        result["per_class"] = metrics.per_class_summary(per_image, hits, class_ids)
    if peak_location is not None:
        result["peak_location"] = peak_location


def _check_choices(rule: str, protocol: str, annotation: str) -> None:
    """Refuses an unknown binarising rule, protocol or box format, in that order.

    Args:
      rule: the binarising rule (`metrics.BINARIZE_RULES`).
      protocol: the headline protocol (`protocols.get` refuses an unknown one).
      annotation: the box format (`protocols.ANNOTATIONS`).
    """
    if rule not in metrics.BINARIZE_RULES:
        raise ValueError(f"rule must be one of {metrics.BINARIZE_RULES}. Received: rule={rule!r}")
    protocols.get(protocol)
    if annotation not in protocols.ANNOTATIONS:
        raise ValueError(f"annotation must be one of {protocols.ANNOTATIONS}. Received: "
                         f"annotation={annotation!r}")


def _annotated_audio_pass(towers: Towers, dataset: tf.data.Dataset, noise_seed: int | None
                          ) -> tuple[dict, dict, tf.data.Dataset, np.ndarray]:
    """The audio pass, keeping only the pairs with a box.

    Args:
      towers: the model's towers.
      dataset: unbatched pairs.
      noise_seed: the white-noise negatives' seed; None: no white noise.

    Returns:
      (audio features, labels, the dataset of annotated pairs batched, the annotated mask
      over every pair).
    """
    batched = dataset.batch(EVAL_BATCH).prefetch(tf.data.AUTOTUNE)
    features, info = _audio_pass(towers, batched, noise_seed)
    # Pairs without any box have an empty ground truth: every map would score 0 there.
    annotated = has_boxes(info["boxes"])
    if not annotated.any():
        raise ValueError(
            "none of the pairs has an annotated box, so there is no ground truth to score "
            "against (unlabelled data, such as imported videos, can train but not be "
            f"evaluated). Received: {len(annotated)} pairs without boxes")
    if not annotated.all():
        features = {k: v[annotated] for k, v in features.items()}
        info = {k: v[annotated] for k, v in info.items()}
        batched = dataset.filter(is_annotated).batch(EVAL_BATCH).prefetch(tf.data.AUTOTUNE)
    return features, info, batched, annotated


def _negative_sounds(towers: Towers, features: dict, info: dict, groups: np.ndarray,
                     class_groups: Sequence[int] | None, samples: int
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The negative sound sets (silence, white noise, an off-screen sound) of every image.

    Args:
      towers: the model's towers.
      features: the audio pass's features ("matched", "white_noise").
      info: the audio pass's labels (`object_classes`, when there, are never off-screen).
      groups: each image's class group.
      class_groups: the group of each class, or None.
      samples: samples per clip (of the silence).

    Returns:
      (kind -> audio features [N, D], each image's off-screen partner, -1: none).
    """
    matched = features["matched"]
    forbidden = info.get("object_classes")
    if forbidden is not None:
        forbidden = _groups_of(forbidden.astype(np.int64), class_groups)
    offscreen = negatives.partner_indices(groups, forbidden)
    silent = audio_features(towers, negatives.silence(samples))
    return ({"silence": np.repeat(silent, len(matched), axis=0),
             "white_noise": features["white_noise"],
             "offscreen": matched[np.where(offscreen >= 0, offscreen, 0)]}, offscreen)


def _headline(result: dict, outputs: dict, boxes: np.ndarray, per_image: np.ndarray,
              rule: str, threshold: float, size: int, protocol: str, annotation: str,
              all_rules: bool) -> np.ndarray:
    """Puts the protocol's headline numbers (and with `all_rules` every protocol's) in
    `result`; returns the per-image cIoU of the headline protocol.

    Args:
      result: soundloc's `fixed` summary, updated in place.
      outputs: the localise pass's outputs per sound set.
      boxes: [N, annotators, boxes, 4] the ground truth.
      per_image: soundloc's per-image cIoU.
      rule, threshold: soundloc's binarising rule and threshold.
      size: soundloc's frame (`config.eval_size`).
      protocol: the headline protocol (`protocols.NAMES`).
      annotation: the box format.
      all_rules: also every protocol's numbers (`by_protocol`).
    """
    peer_names = protocols.NAMES if all_rules else (protocol,)
    by_protocol = {name: protocols.score_heatmaps(
        outputs["matched"][protocols.get(name).map], boxes, name, annotation, rule,
        threshold, size) for name in peer_names if name != "fixed" or all_rules}
    if protocol != "fixed":
        summary, peer_cious = by_protocol[protocol]
        result.update({k: summary[k] for k in (*metrics.SUMMARY_KEYS, "n")},
                      map=protocols.get(protocol).map, eval_size=protocols.FRAME)
        per_image = np.nan_to_num(peer_cious)
    if all_rules:
        result["by_protocol"] = {name: summary for name, (summary, _) in by_protocol.items()}
    return per_image


def _mismatched_sound(result: dict, outputs: dict, gt: np.ndarray, frame_cious: np.ndarray,
                      hits: np.ndarray, has_partner: np.ndarray, rule: str, threshold: float,
                      size: int, partner_definition: str) -> np.ndarray | None:
    """Puts the mismatched sound's numbers and the audio-dependence gap in `result`, on the
    images that have a mismatched partner; returns their per-image cIoU (None: no partner).

    Args:
      result: updated in place.
      outputs: the localise pass's outputs per sound set.
      gt: the consensus maps in soundloc's frame.
      frame_cious, hits: the matched sound's per-image cIoU and pointing hits (soundloc's).
      has_partner: which images have a mismatched partner.
      rule, threshold: soundloc's binarising rule and threshold.
      size: soundloc's frame (`config.eval_size`).
      partner_definition: how the partners were chosen, recorded.
    """
    if not has_partner.any():
        return None
    wrong = metrics.normalize_heatmaps(
        outputs["mismatched"]["attention"][has_partner], size).numpy()
    mismatched, wrong_cious, _ = _score(wrong, gt[has_partner], rule, threshold)
    same_images = metrics.summarize(frame_cious[has_partner], hits[has_partner])
    moved = np.mean(metrics.peak_indices(outputs["matched"]["attention"][has_partner])
                    != metrics.peak_indices(outputs["mismatched"]["attention"][has_partner]))
    result["mismatched_sound"] = {**mismatched, "definition": partner_definition}
    result["audio_dependence_gap"] = {
        **metrics.audio_dependence_gap(same_images, mismatched, moved),
        "n": int(has_partner.sum()),
        "definition": "matched minus mismatched sound on the same images (mismatched: "
                      + partner_definition + "); peak_moved: fraction of images whose "
                      "attention peak moves"}
    return wrong_cious


def _peak_location(attention: np.ndarray, info: dict, size: int) -> dict | None:
    """Where the attention peaks fall (sounding object, context cue, distractors), on scenes
    with a context cue; None without one.

    Args:
      attention: [N, h, w] the matched sound's attention maps.
      info: the audio pass's labels (`cue_box`, `object_boxes`).
      size: the frame the boxes are rasterised in.
    """
    if "cue_box" not in info or not np.any(info["cue_box"] != 0):
        return None
    regions = {"object": info["object_boxes"][:, 0], "cue": info["cue_box"],
               "distractors": info["object_boxes"][:, 1:]}
    location = metrics.peak_region_rates(attention, regions, size)
    to_object, to_cue = (metrics.peak_box_distance(attention, b, size)
                         for b in (regions["object"], regions["cue"]))
    location["nearer_cue_than_object"] = {"rate": float(np.mean(to_cue < to_object)),
                                          "n": int(len(attention))}
    return location


def _negatives_report(result: dict, outputs: dict, offscreen: np.ndarray,
                      per_image: np.ndarray, noise_seed: int, peers: list[str],
                      boxes: np.ndarray, annotation: str) -> dict[str, dict[str, np.ndarray]]:
    """Puts how the model separates the matched sound from the negatives in `result`
    (and the peers' statistics); returns the confidences, "positive" and per negative kind.

    Args:
      result: updated in place.
      outputs: the localise pass's outputs per sound set.
      offscreen: each image's off-screen partner (-1: none, left out of that kind).
      per_image: the headline per-image cIoU.
      noise_seed: the white-noise seed, recorded.
      peers: the peer protocols whose negative statistics to add ("slavc", "vssl_eval").
      boxes: the ground truth, for the peers.
      annotation: the box format, for the peers.
    """
    n = len(per_image)
    confidences = {kind: {"score": outputs[kind]["score"],
                          "map_peak": negatives.map_peak(outputs[kind]["attention"])}
                   for kind in ("matched", *negatives.NEGATIVE_KINDS)}
    keep = {"silence": np.ones(n, bool), "white_noise": np.ones(n, bool),
            "offscreen": offscreen >= 0}
    negative_sets = {kind: {c: v[keep[kind]] for c, v in confidences[kind].items()}
                     for kind in negatives.NEGATIVE_KINDS if keep[kind].any()}
    confidences = {"positive": confidences["matched"], **negative_sets}
    result["negatives"] = negatives.separation_report(confidences["positive"], negative_sets,
                                                      per_image)
    result["negatives"]["noise_seed"] = int(noise_seed)
    if peers:
        result["negatives_by_protocol"] = _peer_negatives(peers, outputs, boxes, keep,
                                                          annotation)
    return confidences


def evaluate_detailed(model: keras.Model, config: Config, dataset: tf.data.Dataset,
                      rule: str = "fixed", progress: Callable[[int], None] | None = None, *,
                      all_rules: bool = False, with_negatives: bool = False,
                      random_seed: int = 0, noise_seed: int = 0,
                      class_groups: Sequence[int] | None = None, protocol: str = "fixed",
                      annotation: str = "flickr") -> tuple[dict, EvaluationDetails]:
    """`evaluate`, also returning the per-image arrays (see `EvaluationDetails`).

    Args:
      model: a `build_model` model (its towers and localiser run separately).
      config: the run's config (map size, attention, thresholds).
      dataset: unbatched pairs with boxes (pairs without any are left out and counted).
      rule: how soundloc's `fixed` protocol binarises a map (`metrics.BINARIZE_RULES`).
      progress: called with the number of pairs done, for long evaluations.
      all_rules: also score every rule (`by_rule`).
      with_negatives: also pair every image with silence, white noise and an off-screen
        sound, and score how the model separates them (SLAVC's AP/F1, vssl_eval's pIA).
      random_seed: seed of the random-box baseline.
      noise_seed: seed of the white-noise negatives.
      class_groups: `class_groups[c]` is the group of class c (classes that sound alike,
        e.g. hen and rooster): mismatched and off-screen sounds are then chosen by group,
        so an image never "mismatches" with a sound of its own group.
      protocol: the rules of the headline numbers (`protocols.NAMES`).
      annotation: the box format a peer's loader assumes ("flickr" or "vggss").

    Returns:
      (the metrics dict `evaluate` returns, the per-image `EvaluationDetails`).
    """
    _check_choices(rule, protocol, annotation)
    towers = split_model(model)
    features, info, batched, annotated = _annotated_audio_pass(
        towers, dataset, noise_seed if with_negatives else None)
    class_ids = info["class_id"].astype(np.int64)
    groups, partners, partner_definition = _grouped_partners(class_ids, class_groups)
    has_partner = partners >= 0
    matched = features["matched"]
    sound_sets = {"matched": matched, "mismatched": matched[np.where(has_partner, partners, 0)]}
    if with_negatives:
        negative_sounds, offscreen = _negative_sounds(towers, features, info, groups,
                                                      class_groups, matched_samples(dataset))
        sound_sets.update(negative_sounds)
    outputs = _localize_pass(towers, batched, sound_sets, info["id"], progress)

    size, threshold = config.eval_size, config.ciou_threshold
    gt = metrics.consensus_map(info["boxes"], size).numpy()
    attention = metrics.normalize_heatmaps(outputs["matched"]["attention"], size).numpy()
    result, frame_cious, hits = _score(attention, gt, rule, threshold)  # soundloc's frame
    result.update(rule=rule, threshold=threshold if rule == "fixed" else None, eval_size=size,
                  baselines=metrics.baselines(gt), map="attention",
                  skipped_without_boxes=int((~annotated).sum()),
                  protocol=protocols.describe(protocol), annotation=annotation)
    per_image = _headline(result, outputs, info["boxes"], frame_cious, rule, threshold, size,
                          protocol, annotation, all_rules)
    result["random_baseline"], random_cious = metrics.random_baseline(gt, random_seed)
    cosine = metrics.normalize_heatmaps(outputs["matched"]["cosine"], size).numpy()
    result["cosine_map"] = _score(cosine, gt, rule, threshold)[0]

    # The audio-dependence gap, on the images that have a mismatched partner.
    curves = {"model": per_image}
    wrong_cious = _mismatched_sound(result, outputs, gt, frame_cious, hits, has_partner, rule,
                                    threshold, size, partner_definition)
    if wrong_cious is not None:
        curves["mismatched_sound"] = wrong_cious
    curves.update(metrics.baseline_cious(gt, random_seed))
    curves["random_box"] = random_cious

    _breakdowns(result, attention, gt, threshold, all_rules, per_image, hits, class_ids,
                _peak_location(outputs["matched"]["attention"], info, size))
    confidences = None
    if with_negatives:
        peers = [name for name in ("slavc", "vssl_eval") if all_rules or name == protocol]
        confidences = _negatives_report(result, outputs, offscreen, per_image, noise_seed,
                                        peers, info["boxes"], annotation)
    details = EvaluationDetails(ciou=per_image, pointing=hits, class_id=class_ids,
                                attention=outputs["matched"]["attention"], boxes=info["boxes"],
                                curves=curves, confidences=confidences)
    return result, details


def _peer_negatives(names: Sequence[str], outputs: dict[str, dict[str, np.ndarray]],
                    boxes: np.ndarray, keep: dict[str, np.ndarray], annotation: str) -> dict:
    """SLAVC's statistics (positives plus each negative kind, then all kinds) and vssl_eval's
    pIA / AOC per negative kind, on the cosine maps as those protocols score them."""
    kinds = [k for k in negatives.NEGATIVE_KINDS if keep[k].any()]
    report: dict[str, dict] = {}
    if "slavc" in names:
        scores = protocols.prepare(outputs["matched"]["cosine"], "slavc", annotation=annotation)
        gt = protocols.ground_truth(boxes, "slavc", annotation=annotation)
        cious = protocols.peer_ciou(protocols.binarize(scores, "slavc"), gt)
        count = (np.abs(boxes).sum(axis=-1) > 0).sum(axis=(1, 2))
        positive = (count, cious, protocols.slavc_confidence(scores), gt.sum(axis=(1, 2)))
        sets = {}
        for kind in kinds:
            negative_scores = protocols.prepare(outputs[kind]["cosine"][keep[kind]], "slavc",
                                                annotation=annotation)
            m = len(negative_scores)
            sets[kind] = (np.zeros(m, np.int64), np.full(m, np.nan),
                          protocols.slavc_confidence(negative_scores), np.zeros(m))
        sets["all kinds pooled"] = tuple(np.concatenate(parts) for parts in zip(*sets.values()))
        report["slavc"] = {kind: protocols.slavc_stats(*(np.concatenate(pair) for pair in
                                                         zip(positive, negative)))
                           for kind, negative in sets.items()}
    if "vssl_eval" in names:
        positive = protocols.prepare(outputs["matched"]["cosine"], "vssl_eval",
                                     annotation=annotation)
        median = np.sort(positive.reshape(len(positive), -1), axis=1)[:, positive[0].size // 2]
        report["vssl_eval"] = {}
        for kind in kinds:
            maps = protocols.resize(outputs[kind]["cosine"][keep[kind]], protocols.FRAME,
                                    "half_pixel")  # cv2 INTER_LINEAR for every test set
            at_half, at_median = protocols.pia(maps, 0.5), protocols.pia(maps, median[keep[kind]])
            report["vssl_eval"][kind] = {
                "pia": float(at_half.mean()), "aoc": protocols.aoc(at_half),
                "pia_thr_ciou": float(at_median.mean()), "aoc_thr_ciou": protocols.aoc(at_median),
                "n": int(len(maps))}
    return report


def evaluate(model: keras.Model, config: Config, dataset: tf.data.Dataset,
             rule: str = "fixed", progress: Callable[[int], None] | None = None, *,
             all_rules: bool = False, with_negatives: bool = False, random_seed: int = 0,
             noise_seed: int = 0, class_groups: Sequence[int] | None = None,
             protocol: str = "fixed", annotation: str = "flickr") -> dict:
    """Scores `model` on an unbatched dataset of the common element spec.

    The headline numbers are on the attention map alpha; the raw cosine map,
    the baselines and the mismatched-sound run are reported beside them (see
    the module doc). The dataset must yield the same order on every pass.
    """
    return evaluate_detailed(model, config, dataset, rule, progress, all_rules=all_rules,
                             with_negatives=with_negatives, random_seed=random_seed,
                             noise_seed=noise_seed, class_groups=class_groups,
                             protocol=protocol, annotation=annotation)[0]
