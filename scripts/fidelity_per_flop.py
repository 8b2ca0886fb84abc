#!/usr/bin/env python
"""Fidelity per FLOP on a depth model's development set: the paper's settings, the residual reconstruction with
temperatures from the feature scale, and expedite="auto", each at several FLOPs budgets.

    python scripts/fidelity_per_flop.py ../shared/proxy_depth/model ../shared/proxy_depth/dev.pt --plot fpf.png

The development set is a ``torch.save``'d dict: ``images`` uint8 ``(N, H, W, 3)`` and, optionally, ``depth`` float
``(N, H, W)`` in metres. Images are fed at their size (predictions compared at it), normalised with the checkpoint's image processor's mean and
std (``--mean`` / ``--std`` when it has none). Per setting: the FLOPs ratio (``torch.utils.flop_counter``), the RMSE
between the expedited and the vanilla depth (metres, per image over the full map, averaged over the images) and, with
reference depth, both models' RMSE against it. ``auto`` calibrates on the photographs bundled with scikit-image (not
on the development images) and is then measured like the others.

Rows:
  paper     the paper's method: k-NN reconstruction (k 20, L1), temperatures fixed at --paper-temperature (the
            value that worked for the paper's method on this model), every clustering location and cluster grid;
  residual  the same locations and grids with reconstruction_residual and temperatures from the feature scale on
            the bundled photographs (hf_expedite.calibration's rule, clustering temperature = the scale);
  auto      expedite="auto" at each --budgets FLOPs ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hf_expedite_cli.errors import InputError, cli
from hf_expedite_cli.options import positive_int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="depth model: hub id or local folder")
    parser.add_argument("dev", help="development set (.pt): images uint8 (N, H, W, 3), optional depth (N, H, W)")
    parser.add_argument("--grids", type=positive_int, nargs="+", default=[8, 10, 12, 14, 16],
                        help="square cluster grids of the paper / residual rows (default: 8 10 12 14 16)")  # fmt: skip
    parser.add_argument("--locations", type=positive_int, nargs="+",
                        help="clustering locations of those rows (default: every block but the first and last)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.55, 0.6, 0.65, 0.7],
                        help="FLOPs budgets of the auto rows (default: 0.55 0.6 0.65 0.7)")  # fmt: skip
    parser.add_argument("--paper-temperature", type=float, default=0.9, help="paper rows' temperatures (0.9)")
    parser.add_argument("--mean", type=float, default=0.5, help="normalisation without an image processor (0.5)")
    parser.add_argument("--std", type=float, default=0.5, help="normalisation without an image processor (0.5)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per forward (8)")
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--plot", help="write fidelity vs FLOPs ratio (PNG) to this path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)  # before the heavy imports: --help and a bad option answer at once
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoImageProcessor, DPTImageProcessorPil

    import hf_expedite
    from hf_expedite.benchmark.measure import count_flops
    from hf_expedite.calibration import calibration_inputs, feature_scale, num_blocks, scaled_temperatures

    try:
        model = hf_expedite.AutoModelForDepthEstimation.from_pretrained(args.model, expedite=False).eval()
        dev = torch.load(args.dev, map_location="cpu")
        images = dev["images"]
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise InputError(f"{type(error).__name__}: {error}") from error
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise InputError(f"dev images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    height, width = images.shape[1:3]
    try:
        processor = AutoImageProcessor.from_pretrained(args.model)
        mean, std = processor.image_mean, processor.image_std
    except OSError:
        mean, std = [args.mean] * 3, [args.std] * 3
        processor = DPTImageProcessorPil(size={"height": height, "width": width}, keep_aspect_ratio=False,
                                         image_mean=mean, image_std=std)  # fmt: skip
    pixels = (images.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    reference = dev.get("depth")

    def predict(candidate: torch.nn.Module) -> torch.Tensor:
        """Depth at the images' size (a head with another output size is resized bilinearly)."""
        with torch.inference_mode():
            depth = torch.cat([candidate(pixel_values=pixels[i : i + args.batch_size]).predicted_depth
                               for i in range(0, len(pixels), args.batch_size)])  # fmt: skip
        if depth.shape[-2:] != (height, width):
            depth = torch.nn.functional.interpolate(depth[:, None], (height, width), mode="bilinear")[:, 0]
        return depth

    def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a - b) ** 2).flatten(1).mean(1).sqrt().mean())

    vanilla = predict(model)
    one = {"pixel_values": pixels[:1]}
    vanilla_flops = count_flops(model, one)
    rows: list[dict[str, Any]] = []

    def measure(family: str, candidate: torch.nn.Module, settings: dict[str, Any]) -> None:
        prediction = predict(candidate)
        row = {"family": family, "settings": settings, "flops_ratio": count_flops(candidate, one) / vanilla_flops,
               "rmse_to_vanilla": rmse(prediction, vanilla)}  # fmt: skip
        if reference is not None:
            row["rmse_to_reference"] = rmse(prediction, reference)
            row["vanilla_rmse_to_reference"] = rmse(vanilla, reference)
        rows.append(row)

    locations = args.locations or list(range(1, num_blocks(model.config) - 1))
    pairs = [(alpha, grid) for alpha in locations for grid in args.grids]
    photographs = calibration_inputs(model, None, processor)  # the scale comes from the bundled photographs, as auto
    for alpha, grid in tqdm(pairs, desc="paper + residual rows", unit="setting"):
        placed = {"clustering_location": alpha, "num_clusters": [grid, grid]}
        paper = {**placed, "reconstruction_mode": "knn", "clustering_temperature": args.paper_temperature,
                 "reconstruction_temperature": args.paper_temperature}  # fmt: skip
        measure("paper", hf_expedite.expedite(model, paper), paper)
        residual = {**placed, "reconstruction_residual": True, **scaled_temperatures(feature_scale(model, placed, photographs))}
        measure("residual", hf_expedite.expedite(model, residual), residual)
    for budget in args.budgets:
        auto = hf_expedite.expedite(model, "auto", target_flops_ratio=budget, image_processor=processor)
        measure(f"auto <= {budget:g}", auto, auto.expedite_calibration.settings)
    print(markdown(rows, args))
    print()
    print(budget_table(rows, args.budgets))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    if args.plot:
        plot(rows, args.plot)
    return rows


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The rows as a table, each family's rows by FLOPs ratio."""
    reference = "rmse_to_reference" in rows[0]
    header = "| rows | settings | FLOPs ratio | RMSE to vanilla (m) |" + (" RMSE to reference (m) |" if reference else "")
    lines = [header, "|---|---|---|---|" + ("---|" if reference else "")]
    for row in sorted(rows, key=lambda r: (r["family"].split()[0], r["flops_ratio"])):
        shown = {k: v for k, v in row["settings"].items() if k != "reconstruction_mode"}
        cells = [row["family"], ", ".join(f"{k}={v}" for k, v in shown.items()), f"{row['flops_ratio']:.3f}",
                 f"{row['rmse_to_vanilla']:.4f}"]  # fmt: skip
        if reference:
            cells.append(f"{row['rmse_to_reference']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    if reference:
        lines.append(f"\nvanilla RMSE to reference: {rows[0]['vanilla_rmse_to_reference']:.4f} m")
    return "\n".join(lines)


def budget_table(rows: list[dict[str, Any]], budgets: list[float]) -> str:
    """Per FLOPs budget: the most faithful paper row and residual row within it, and the auto row."""

    def cell(candidates: list[dict[str, Any]]) -> str:
        if not candidates:
            return "-"
        row = min(candidates, key=lambda r: r["rmse_to_vanilla"])
        settings = row["settings"]
        grid = settings.get("num_clusters") or f"ratio {settings.get('cluster_ratio')}"
        grid = f"{grid[0]}x{grid[1]}" if isinstance(grid, list) else grid
        return (f"{row['rmse_to_vanilla']:.4f} m (alpha {settings['clustering_location']}, {grid}, FLOPs "
                f"{row['flops_ratio']:.3f})")  # fmt: skip

    lines = ["| FLOPs budget | paper, best row | residual + scale temperatures, best row | auto |", "|---|---|---|---|"]
    for budget in budgets:
        within = [r for r in rows if r["flops_ratio"] <= budget]
        lines.append(
            f"| <= {budget:g} | {cell([r for r in within if r['family'] == 'paper'])} | "
            f"{cell([r for r in within if r['family'] == 'residual'])} | "
            f"{cell([r for r in rows if r['family'] == f'auto <= {budget:g}'])} |"
        )
    return "\n".join(lines)


def best_per_budget(rows: list[dict[str, Any]], family: str) -> list[tuple[float, float]]:
    """(FLOPs ratio, RMSE to vanilla) of the family's Pareto front: the most faithful row at or below each ratio."""
    points = sorted((r["flops_ratio"], r["rmse_to_vanilla"]) for r in rows if r["family"].startswith(family))
    front, best = [], float("inf")
    for ratio, error in points:
        if error < best:
            front.append((ratio, error))
            best = error
    return front


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for family, marker in (("paper", "o"), ("residual", "s"), ("auto", "*")):
        points = [(r["flops_ratio"], r["rmse_to_vanilla"]) for r in rows if r["family"].startswith(family)]
        axes.scatter(*zip(*points), marker=marker, s=60 if family == "auto" else 18, label=family, alpha=0.8)
        front = best_per_budget(rows, family)
        axes.plot(*zip(*front), linewidth=0.8)
    axes.set_xlabel("FLOPs ratio (expedited / vanilla, torch.utils.flop_counter)")
    axes.set_ylabel("RMSE to the vanilla depth (m)")
    axes.set_yscale("log")
    axes.legend()
    axes.set_title("Fidelity per FLOP on the development images")
    figure.tight_layout()
    figure.savefig(path, dpi=150)


if __name__ == "__main__":
    sys.exit(cli(main))
