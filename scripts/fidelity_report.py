#!/usr/bin/env python
"""How closely does the expedited model follow the vanilla one on *your* images? No labels needed.

    python scripts/fidelity_report.py Intel/dpt-hybrid-midas                       # scikit-image photographs
    python scripts/fidelity_report.py Intel/dpt-large --images photos/ street.jpg --max-images 50
    python scripts/fidelity_report.py facebook/mask2former-swin-large-coco-panoptic --all-presets
    python scripts/fidelity_report.py MODEL --expedite default --expedite '{"cluster_ratio": 0.5}' \\
        --expedite '{"cluster_ratio": 0.8, "clustering_location": 4}' --output-dir fidelity
    python scripts/fidelity_report.py MODEL --calibrate --target-speedup 1.5 --images photos/ --output-dir fidelity

The vanilla model's prediction is the reference. Depth: Pearson correlation and relative L1 difference
(mean |expedited - vanilla| / mean |vanilla|) of the depth maps. Semantic segmentation: share of pixels with the
vanilla label and mIoU against the vanilla label maps. Panoptic segmentation: share of pixels with the vanilla class
and PQ against the vanilla segments. Mask generation (SAM): mean IoU of the masks both models predict for a 4 x 4
grid of single-point prompts per image, and their pixel agreement. Each row also gives the forward-pass speed-up (vanilla time / expedited time,
pre- and post-processing excluded, one warm-up pass per model), so a sweep over several settings (--expedite given
several times, or --all-presets) shows the speed / fidelity trade-off before any labelled evaluation.

The task follows the checkpoint (depth models: depth; DPT segmentation: semantic; Mask2Former, EoMT: panoptic,
or --task semantic; SAM: masks). Images: files and folders (their image files, not recursive); without --images, the photographs
bundled with scikit-image. Unreadable files are skipped with a warning. Prints a markdown table; --output-dir also
writes fidelity.md and fidelity.json (per-image values included) and, per setting and image, a picture
pictures/<row>-<setting>/<image>.png: input, vanilla, expedited and where they differ.

--calibrate chooses the settings for a budget (expedite="auto": --target-speedup, read as a FLOPs ratio of its
inverse, or --target-flops-ratio) on the same images, prints what it chose and compares it like the other rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from hf_expedite_cli.errors import InputError, cli
from hf_expedite_cli.options import DTYPE_NAMES, parse_expedite, positive_int

if TYPE_CHECKING:
    from PIL.Image import Image

    from hf_expedite.fidelity import FidelityReport

SKIMAGE_PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
TASKS = {  # task -> (what it is, the hf_expedite Auto classes whose models do it), in the order tried by --task auto
    "depth": ("depth estimation", ("AutoModelForDepthEstimation",)),
    "semantic": ("semantic segmentation", ("AutoModelForSemanticSegmentation", "AutoModelForUniversalSegmentation")),
    "panoptic": ("panoptic segmentation", ("AutoModelForUniversalSegmentation",)),
    "masks": ("promptable mask generation", ("AutoModelForMaskGeneration",)),
}


def load_images(paths: Sequence[str], limit: int | None) -> list[tuple[str, Image]]:
    """(name, RGB image) for the given files and folders, or the scikit-image photographs without paths."""
    from PIL import Image

    from hf_expedite.benchmark.photos import photograph
    from hf_expedite.evaluation.datasets_io import to_rgb

    if not paths:
        return [(name, photograph(name)) for name in SKIMAGE_PHOTOGRAPHS[:limit]]
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"No such image file or folder: {path}")
    images = []
    for file in files[:limit]:
        try:
            with Image.open(file) as image:
                images.append((str(file), to_rgb(image)))
        except Exception as error:  # noqa: BLE001 - documented: unreadable files are skipped with a warning
            warnings.warn(f"Skipping {file}: not a readable image ({type(error).__name__}: {error}).", stacklevel=2)
    if not images:
        raise InputError(f"No readable image in {list(paths)}.")
    return images


def resolve_task(config: Any, task: str, model: str) -> tuple[str, type]:
    """(task, Auto class) for ``--task`` (``auto``: the first task the checkpoint's architecture does, a Mask2Former
    checkpoint counting as panoptic)."""
    import hf_expedite
    from hf_expedite.evaluation.runner import auto_class_for_task

    def auto_classes(name: str) -> tuple[type, ...]:
        return tuple(getattr(hf_expedite, class_name) for class_name in TASKS[name][1])

    if task != "auto":
        return task, auto_class_for_task(config, auto_classes(task), TASKS[task][0], model)
    for name in ("depth", "semantic", "panoptic", "masks"):
        try:
            return name, auto_class_for_task(config, auto_classes(name)[:1], "", model)  # the task's own class
        except ValueError:
            continue
    raise InputError(f"{model} is not a depth estimation, semantic or universal segmentation or mask generation model.")


def setting_requests(args: argparse.Namespace, config: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """(row name -> ``expedite=`` request, row name -> why a preset does not apply), rows in order: each --expedite
    (an invalid one raises), then the presets of --all-presets that apply to this model. Without either: the saved
    settings of an expedited checkpoint or the default preset."""
    from hf_expedite import list_presets
    from hf_expedite.conversion import conversion_for, is_expedited
    from hf_expedite.evaluation.runner import check_expedite_request

    requests = {label: request for label, request in args.expedite or []}
    for request in requests.values():
        check_expedite_request(config, request)
    skipped = {}
    if args.all_presets:
        family = conversion_for(config).preset_family(config)
        for name in list_presets(family)[family]:
            try:
                check_expedite_request(config, name)
                requests[name] = name
            except ValueError as error:
                skipped[name] = str(error)
    if not requests and not skipped and not args.calibrate:
        requests = {"saved settings" if is_expedited(config) else "default preset": None}
    return requests, skipped


def expedite_option(value: str) -> tuple[str, Any]:
    return value, parse_expedite(value)


def markdown_table(reports: dict[str, FidelityReport | str], task: str) -> str:
    """One row per setting: the summary values, both models' ms / image and the speed-up (or the error)."""
    keys = next((list(r.summary) for r in reports.values() if not isinstance(r, str)), [])
    header = ["setting", *keys, "vanilla ms/img", "expedited ms/img", "speed-up"]
    lines = [f"## Fidelity to the vanilla model ({task})", "", "| " + " | ".join(header) + " |"]
    lines.append("|---|" + "---:|" * (len(header) - 1))
    for name, report in reports.items():
        if isinstance(report, str):
            lines.append(f"| {name} | {report.replace('|', '/')} |" + " |" * (len(header) - 2))
            continue
        images = len(report.per_image)
        cells = [f"{report.summary[key]:.4f}" for key in keys] + [
            f"{1000 * report.vanilla_seconds / images:.1f}",
            f"{1000 * report.expedited_seconds / images:.1f}",
            f"{report.speedup:.2f}x",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model id on the hub or local directory (vanilla or expedited checkpoint)")
    parser.add_argument("--model-revision", help="model revision")
    parser.add_argument("--task", choices=["auto", *TASKS], default="auto", help="default: from the checkpoint")
    parser.add_argument("--images", nargs="+", default=[], help="image files and/or folders (default: skimage photos)")
    parser.add_argument("--max-images", type=positive_int, help="use at most N images")
    parser.add_argument(
        "--expedite",
        type=expedite_option,
        action="append",
        help="a setting to compare, repeatable: 'true', a preset name or a JSON object of settings (default: the "
        "saved settings of an expedited checkpoint, else the architecture's default preset)",
    )
    parser.add_argument("--all-presets", action="store_true", help="also compare every preset of the architecture")
    calibration = parser.add_argument_group("calibration (expedite='auto')")
    calibration.add_argument("--calibrate", action="store_true", help="choose the settings for a budget on the images")
    calibration.add_argument("--target-speedup", type=float, help="budget: FLOPs ratio 1 / this (e.g. 1.5)")
    calibration.add_argument("--target-flops-ratio", type=float, help="budget: expedited / vanilla FLOPs (e.g. 0.65)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="model dtype (default: float32)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--output-dir", help="also write fidelity.md and fidelity.json here")
    parser.add_argument("--overwrite", action="store_true", help="replace fidelity.md / fidelity.json there")
    panoptic = parser.add_argument_group("panoptic post-processing")
    panoptic.add_argument("--threshold", type=float, default=0.8, help="query score threshold (default: 0.8)")
    panoptic.add_argument("--mask-threshold", type=float, default=0.5, help="mask binarisation (default: 0.5)")
    panoptic.add_argument("--overlap-threshold", type=float, default=0.8, help="overlap area threshold (default: 0.8)")
    panoptic.add_argument("--thing-ids", help="label ids of thing classes (the others are fused), e.g. 0-79")
    args = parser.parse_args(argv)
    targets = [name for name in ("target_speedup", "target_flops_ratio") if getattr(args, name) is not None]
    if args.calibrate and len(targets) != 1:
        parser.error("--calibrate needs exactly one of --target-speedup and --target-flops-ratio")
    if targets and not args.calibrate:
        parser.error(f"--{targets[0].replace('_', '-')} is the budget of --calibrate: add --calibrate")
    if args.target_speedup is not None and not args.target_speedup > 1:
        parser.error(f"--target-speedup must be above 1, got {args.target_speedup}")
    if args.target_flops_ratio is not None and not 0 < args.target_flops_ratio < 1:
        parser.error(f"--target-flops-ratio must lie strictly between 0 and 1, got {args.target_flops_ratio}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Compare the settings; returns {setting: report dict or error message}."""
    args = parse_args(argv)  # before the heavy imports: --help and a bad option answer at once
    import torch
    from transformers import AutoConfig, AutoImageProcessor

    from hf_expedite.evaluation.report import prepare_output_dir, to_jsonable
    from hf_expedite.evaluation.runner import DTYPES, load_model, model_pair, panoptic_post_processing, parse_ids
    import hf_expedite
    from hf_expedite.fidelity import FidelityReport, compare_predictions, side_by_side, timed_predictions

    try:
        if args.output_dir:
            prepare_output_dir(args.output_dir, ["fidelity.md", "fidelity.json"], overwrite=args.overwrite)
    except ValueError as error:
        raise InputError(str(error)) from error
    images = load_images(args.images, args.max_images)
    try:
        config = AutoConfig.from_pretrained(args.model, revision=args.model_revision)
        task, auto_class = resolve_task(config, args.task, args.model)
        requests, not_applicable = setting_requests(args, config)
        post_processing = None
        if task == "panoptic":
            thing_ids = parse_ids(args.thing_ids) if args.thing_ids else None
            post_processing = panoptic_post_processing(
                len(config.id2label), thing_ids, args.threshold, args.mask_threshold, args.overlap_threshold
            )
        processor = AutoImageProcessor.from_pretrained(args.model, revision=args.model_revision)
    except (ValueError, OSError) as error:  # bad settings; a missing folder or Hub repository
        raise InputError(str(error)) from error
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.model, auto_class, revision=args.model_revision, dtype=DTYPES[args.dtype], device=device)
    vanilla = model_pair(model, None)[0]
    pictures = [image for _, image in images]
    references, vanilla_seconds = timed_predictions(vanilla, processor, pictures, task, post_processing)
    reports: dict[str, FidelityReport | str] = {}
    predictions: dict[str, list[Any]] = {}
    models = {name: (lambda request=request: model_pair(model, request)[1]) for name, request in requests.items()}
    if args.calibrate:
        calibrated = hf_expedite.expedite(
            vanilla, "auto", target_speedup=args.target_speedup, target_flops_ratio=args.target_flops_ratio,
            calibration_images=pictures, image_processor=processor,
        )  # fmt: skip
        calibration = calibrated.expedite_calibration
        print(calibration.summary())
        models = {"auto": lambda: calibrated, **models}
    for name, build in models.items():
        try:
            expedited = build()
            outputs, seconds = timed_predictions(expedited, processor, pictures, task, post_processing)
        except ValueError as error:  # e.g. a preset's fixed cluster grid larger than these images' token grid
            reports[name] = f"{type(error).__name__}: {error}"
            continue
        per_image, summary = compare_predictions(vanilla, references, outputs, task)
        reports[name] = FidelityReport(task, per_image, summary, vanilla_seconds, seconds)
        predictions[name] = outputs
    reports.update({name: f"not applicable: {reason}" for name, reason in not_applicable.items()})
    table = markdown_table(reports, task)
    print(table)
    payload = {
        name: report if isinstance(report, str) else {
            "summary": report.summary,
            "speedup": report.speedup,
            "vanilla_seconds": report.vanilla_seconds,
            "expedited_seconds": report.expedited_seconds,
            "per_image": dict(zip([n for n, _ in images], report.per_image)),
        }
        for name, report in reports.items()
    }
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "fidelity.md").write_text(table, encoding="utf-8")
        document = {"model": args.model, "task": task, "images": [n for n, _ in images], "settings": payload}
        if args.calibrate:
            document["calibration"] = {"settings": calibration.settings, "flops_ratio": calibration.flops_ratio,
                                       "relative_difference": calibration.difference}  # fmt: skip
        (out / "fidelity.json").write_text(json.dumps(to_jsonable(document), indent=2) + "\n", encoding="utf-8")
        for row, (name, outputs) in enumerate(predictions.items()):  # folders in the table's row order
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_")
            folder = out / "pictures" / f"{row:02d}-{safe}"[:48]
            folder.mkdir(parents=True, exist_ok=True)
            for index, ((image_name, image), reference, output) in enumerate(zip(images, references, outputs)):
                side_by_side(image, reference, output, task, folder / f"{index:03d}_{Path(image_name).stem[:40]}.png")
    if args.calibrate and isinstance(payload.get("auto"), dict):
        payload["auto"]["calibration"] = calibration.settings
    return payload


if __name__ == "__main__":
    sys.exit(cli(main))
