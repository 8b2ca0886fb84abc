#!/usr/bin/env python
"""Expedited vs vanilla, side by side in one process: latency, FLOPs, the cost of clustering/reconstruction.

Models are built at real architecture sizes with random weights (timing does not depend on the weights), the
expedited one sharing the vanilla one's tensors, and fed the photographs bundled with scikit-image. No Hub access.

    python scripts/benchmark.py                      # the default cases (ViT-B/16 512, ViT-L/16 640)
    python scripts/benchmark.py --suite paper --throughput-batch 4 --plot speed_vs_fidelity.png
    python scripts/benchmark.py --suite scaling --plot scaling.png   # ViT-B/16 from 512x512 to 1024x2048
    python scripts/benchmark.py --cases vit-b16-512 --variants float32 bfloat16 autocast-bf16 compiled
    python scripts/benchmark.py --cases all --json results.json
    python scripts/benchmark.py --list
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from hf_expedite_cli.options import non_negative_int, positive_int

if TYPE_CHECKING:
    from hf_expedite.benchmark.measure import CaseResult

DEFAULT_CASES = ("vit-b16-512", "vit-l16-640-ade20k")


def _optional(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(results: list[CaseResult]) -> str:
    """The results as a markdown table (FLOPs counted by torch.utils.flop_counter: 2 per multiply-add)."""
    lines = [
        "| case | vanilla ms | expedited ms | speedup | ideal ms | ratio to ideal (IQR) | throughput ratio (batch) | "
        "GFLOPs vanilla -> expedited | FLOPs ratio | backbone FLOPs ratio | clustering + reconstruction | "
        "peak MB vanilla -> expedited | output rel. error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        throughput = "-" if r.throughput_ratio is None else f"{r.throughput_ratio:.2f}x ({r.throughput_batch})"
        lines.append(
            f"| {r.name} | {r.vanilla_ms:.0f} | {r.expedited_ms:.0f} | {r.speedup:.2f}x | {r.ideal_ms:.0f} | "
            f"{r.ratio_to_ideal:.2f} ({r.ratio_to_ideal_iqr[0]:.2f}-{r.ratio_to_ideal_iqr[1]:.2f}) | {throughput} | "
            f"{r.vanilla_gflops:.1f} -> {r.expedited_gflops:.1f} | {r.flops_ratio:.3f} | "
            f"{_optional(r.backbone_flops_ratio, '.3f')} | "
            f"{r.overhead_share:.1%} ({r.clustering_ms:.1f} + {r.reconstruction_ms:.1f} ms) | "
            f"{r.vanilla_peak_mb:.0f} -> {r.expedited_peak_mb:.0f} | {r.output_relative_error:.3f} |"
        )
    return "\n".join(lines)


def plot_speed_vs_fidelity(results: list[CaseResult], path: str) -> None:
    """Speedup against the relative difference from the vanilla output on the photographs, one point per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for r in results:
        axes.scatter(r.speedup, r.output_relative_error, s=30)
        axes.annotate(r.name, (r.speedup, r.output_relative_error), fontsize=7, xytext=(4, 4),
                      textcoords="offset points")
    axes.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes.set_xlabel("speedup over vanilla (median latency ratio, same process)")
    axes.set_ylabel("|expedited - vanilla| / |vanilla| (primary output)")
    axes.set_title("Expedite: speed vs fidelity to the vanilla model on real photographs")
    figure.tight_layout()
    figure.savefig(path, dpi=150)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=None, help="case names, or 'all'")
    parser.add_argument("--suite", choices=("default", "paper", "scaling"), default="default",
                        help="'paper': the paper's settings of every architecture; 'scaling': ViT-B/16 from 512x512 "
                        "to 1024x2048 with M = N / 4 (ignored with --cases)")
    parser.add_argument(
        "--throughput-batch", type=positive_int, default=None, help="also measure images/s at this batch"
    )
    parser.add_argument(
        "--plot", help="write a chart (PNG) to this path: speed-up and ratio to ideal per case for --suite scaling, "
        "else speed vs fidelity"
    )
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed forwards per model (alternated)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed rounds before timing")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="device to run on, e.g. cuda")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--list", action="store_true", help="list the available cases and exit")
    parser.add_argument(
        "--variants", nargs="+", choices=("float32", "bfloat16", "autocast-bf16", "compiled"), default=["float32"],
        help="how each case runs: float32 eager (default), bfloat16 weights, bfloat16 autocast, torch.compile "
        "(inductor); one row per case and variant",
    )
    return parser


def plot_scaling(results: list[CaseResult], path: str) -> None:
    """Speed-up, ideal speed-up and ratio to ideal per case (in the suite's order of growing resolution)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (speed, ratio) = plt.subplots(1, 2, figsize=(10, 4))
    names = [r.name for r in results]
    speed.plot(names, [r.speedup for r in results], marker="o", label="expedited")
    ideal = [r.speedup / r.ratio_to_ideal for r in results]  # the same per-round medians as the right panel
    speed.plot(names, ideal, marker="s", linestyle="--", label="ideal (limit)")
    speed.set_ylabel("speed-up over vanilla")
    speed.legend()
    ratios = [r.ratio_to_ideal for r in results]
    spread = [[m - r.ratio_to_ideal_iqr[0] for m, r in zip(ratios, results)],
              [r.ratio_to_ideal_iqr[1] - m for m, r in zip(ratios, results)]]  # fmt: skip
    ratio.errorbar(names, ratios, yerr=spread, marker="o", capsize=3, label="median over rounds, interquartile range")
    ratio.legend()
    ratio.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ratio.set_ylabel("expedited speed-up / ideal speed-up")
    for axes in (speed, ratio):
        axes.tick_params(axis="x", labelrotation=20, labelsize=8)
    figure.suptitle("Expedite vs resolution (latency ratios within each round, same process, alternated)")
    figure.tight_layout()
    figure.savefig(path, dpi=150)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # before the heavy imports: --help and a bad option answer at once
    import torch
    from tqdm.auto import tqdm

    from hf_expedite.benchmark.measure import run_case
    from hf_expedite.benchmark.registry import all_cases, suite_cases
    from hf_expedite.benchmark.variants import apply_variant

    cases = all_cases()
    if args.list:
        for name, build in cases.items():
            print(name)
        return 0
    if args.cases:
        names = list(cases) if args.cases == ["all"] else args.cases
    else:
        names = list(DEFAULT_CASES) if args.suite == "default" else suite_cases(args.suite)
    unknown = [name for name in names if name not in cases]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; available: {', '.join(cases)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    results = []
    runs = [(name, variant) for name in names for variant in args.variants]
    for name, variant in tqdm(runs, desc="benchmark", unit="case"):
        case = cases[name]()
        case.vanilla.to(args.device)
        case.expedited.to(args.device)
        case.inputs = {key: value.to(args.device) for key, value in case.inputs.items()}
        case = apply_variant(case, variant)
        results.append(
            run_case(case, repeats=args.repeats, warmup=args.warmup, throughput_batch=args.throughput_batch)
        )
        tqdm.write(f"{case.name}: {results[-1].speedup:.2f}x, FLOPs ratio {results[-1].flops_ratio:.3f}")
        del case
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, batch as listed\n")
    print(markdown_table(results))
    print("\nFLOPs: torch.utils.flop_counter, 2 per multiply-add (the paper's GFLOPs are multiply-adds: halve ours).")
    if args.plot:
        plot = plot_scaling if args.suite == "scaling" and not args.cases else plot_speed_vs_fidelity
        plot(results, args.plot)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([r.as_dict() for r in results], handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
