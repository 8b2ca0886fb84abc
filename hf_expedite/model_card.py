"""Model cards for expedited checkpoints, rendered from ``model_cards/template.md`` (``string.Template``).

The card's YAML metadata uses ``library_name: transformers``: the repository is a transformers checkpoint
(``config.json`` + safetensors in the transformers layout, readable by the vanilla class) loaded through transformers'
Auto classes once ``hf_expedite`` is imported, so the Hub's transformers integration (download counts, file
conventions) applies; the ``hf-expedite`` and ``expedite`` tags mark the package it needs. ``license`` (and
``license_name`` / ``license_link``) is inherited from the base model's card when it can be read, and left out
otherwise (offline, no card, no license).

Results are given as JSON (a path, a dict, or a list of them), one entry per evaluation or benchmark::

    {
      "title": "ADE20K val, 512x512, A100 fp16",            # optional
      "metadata": {"dataset": "ADE20K", "batch size": 1},   # optional, shown as a list
      "vanilla":   {"metrics": {"mIoU": 51.82}, "images_per_second": 6.55, "latency_ms": 152.7},
      "expedited": {"metrics": {"mIoU": 51.56}, "images_per_second": 9.51, "latency_ms": 105.2}
    }

Every key of ``metrics`` and the speed keys are optional; a row is shown for each value present in either model,
with the ratio expedited / vanilla. This is the JSON the evaluation scripts write (extra keys are ignored).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Template
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from transformers import PreTrainedConfig

from .auto import auto_class_for
from .conversion import settings_holder, vanilla_class
from .settings import expedite_settings

def _template_path() -> Path:
    """``model_cards/template.md`` of a source checkout, else the copy a wheel installs under ``sys.prefix``."""
    checkout = Path(__file__).resolve().parent.parent / "model_cards" / "template.md"
    installed = Path(sys.prefix) / "share" / "hf_expedite" / "model_cards" / "template.md"
    return checkout if checkout.exists() else installed


TEMPLATE_PATH = _template_path()

CITATION = """@inproceedings{liang2022expediting,
  title         = {Expediting Large-Scale Vision Transformer for Dense Prediction without Fine-tuning},
  author        = {Liang, Weicong and Yuan, Yuhui and Ding, Henghui and Luo, Xiao and Lin, Weihong and Jia, Ding and
                   Zhang, Zheng and Zhang, Chao and Hu, Han},
  booktitle     = {Advances in Neural Information Processing Systems},
  volume        = {35},
  year          = {2022},
  eprint        = {2210.01035},
  archivePrefix = {arXiv}
}"""

PIPELINE_TAGS = {
    "AutoModelForImageClassification": "image-classification",
    "AutoModelForDepthEstimation": "depth-estimation",
    "AutoModelForSemanticSegmentation": "image-segmentation",
    "AutoModelForUniversalSegmentation": "image-segmentation",
    "AutoModelForMaskGeneration": "mask-generation",
    "AutoModel": "image-feature-extraction",
    "AutoBackbone": "image-feature-extraction",
}
"""Hub ``pipeline_tag`` per shadow Auto class."""

_LICENSE_KEYS = ("license", "license_name", "license_link")
_SPEED_ROWS = (("images / s", "images_per_second"), ("latency (ms)", "latency_ms"))


def base_model_metadata(base_model: str, token: str | None = None) -> dict[str, Any]:
    """The card metadata of ``base_model`` (a hub id or a local folder with a README.md); ``{}`` if unavailable."""
    readme = Path(base_model) / "README.md"
    try:
        card = ModelCard.load(readme if readme.is_file() else base_model, token=token)
    except (OSError, ValueError):  # offline, no card, gated (Hub errors are OSErrors), malformed: inherit nothing
        return {}
    return card.data.to_dict()


def load_results(source: str | Path | Mapping[str, Any] | Sequence[Any] | None) -> list[dict[str, Any]]:
    """Results in the documented format, from a JSON path, a dict, or a list of paths/dicts."""
    if source is None:
        return []
    if isinstance(source, (str, Path)):
        return load_results(json.loads(Path(source).read_text(encoding="utf-8")))
    if isinstance(source, Mapping):
        if not ("vanilla" in source and "expedited" in source):
            raise ValueError(f"A result needs 'vanilla' and 'expedited' entries; got keys {sorted(source)}.")
        return [dict(source)]
    return [result for item in source for result in load_results(item)]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _format(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def results_table(result: Mapping[str, Any]) -> str:
    """One result as markdown: title, metadata list and a vanilla / expedited / ratio table."""
    vanilla, expedited = result["vanilla"], result["expedited"]
    rows = []
    names = list(vanilla.get("metrics", {}))
    names += [name for name in expedited.get("metrics", {}) if name not in names]
    pairs = [(name, vanilla.get("metrics", {}).get(name), expedited.get("metrics", {}).get(name)) for name in names]
    pairs += [(label, vanilla.get(key), expedited.get(key)) for label, key in _SPEED_ROWS]
    for name, a, b in pairs:
        a, b = _number(a), _number(b)
        if a is None and b is None:
            continue
        ratio = b / a if a not in (None, 0.0) and b is not None else None
        rows.append(f"| {name} | {_format(a)} | {_format(b)} | {'n/a' if ratio is None else f'{ratio:.4f}'} |")
    lines = [f"### {result['title']}", ""] if result.get("title") else []
    lines += [f"- {key}: {value}" for key, value in result.get("metadata", {}).items()]
    speedup = _speedup(vanilla, expedited)
    if speedup is not None:
        verdict = "faster" if speedup > 1 else "not faster on the hardware measured"
        lines.append(f"- measured speed-up: **{speedup:.2f}x**, {verdict} (images per second, expedited / vanilla)")
    if lines and lines[-1] != "":
        lines.append("")
    lines += ["| | vanilla | expedited | expedited / vanilla |", "|---|---:|---:|---:|", *rows]
    return "\n".join(lines)


def _speedup(vanilla: Mapping[str, Any], expedited: Mapping[str, Any]) -> float | None:
    a, b = _number(vanilla.get("images_per_second")), _number(expedited.get("images_per_second"))
    if a and b is not None:
        return b / a
    a, b = _number(vanilla.get("latency_ms")), _number(expedited.get("latency_ms"))
    return a / b if a is not None and b else None


def settings_table(config: PreTrainedConfig) -> str:
    """The Expedite settings of an expedited config as a markdown table."""
    holder = settings_holder(config)
    if holder is None:
        raise ValueError(f"{type(config).__name__} is not an expedited config: it has no Expedite settings.")
    rows = [f"| `{name}` | `{json.dumps(value)}` |" for name, value in expedite_settings(holder).items()]
    return "\n".join(["| setting | value |", "|---|---|", *rows])


def _usage(auto_name: str, repo_id: str, pipeline_tag: str) -> str:
    return "\n".join(
        [
            f"from hf_expedite import {auto_name}",
            "",
            f'model = {auto_name}.from_pretrained("{repo_id}")  # expedited, with the settings below',
            f'vanilla = {auto_name}.from_pretrained("{repo_id}", expedite=False)  # the original model',
            "",
            "# or through transformers: importing hf_expedite registers the expedited model types",
            "import hf_expedite, transformers",
            "",
            f'pipe = transformers.pipeline("{pipeline_tag}", model="{repo_id}")',
        ]
    )


def render_model_card(
    config: PreTrainedConfig,
    *,
    base_model: str,
    repo_id: str,
    results: str | Path | Mapping[str, Any] | Sequence[Any] | None = None,
    base_metadata: Mapping[str, Any] | None = None,
    remote_code: bool = False,
    template: str | Path = TEMPLATE_PATH,
    token: str | None = None,
) -> str:
    """The README.md of an expedited checkpoint.

    ``base_model`` is the hub id (or local folder) the weights come from; a local folder is not written into the
    metadata (the Hub expects a repository id there). ``base_metadata`` is the base card's metadata; when None it is
    read with :func:`base_model_metadata`. ``remote_code`` says the folder carries the ``trust_remote_code`` shim.
    """
    auto_name = auto_class_for(config).__name__
    pipeline_tag = PIPELINE_TAGS[auto_name]
    is_local = Path(base_model).exists()
    if base_metadata is None:
        base_metadata = base_model_metadata(base_model, token=token)
    vanilla_type = vanilla_class(type(config)).model_type
    data = ModelCardData(
        base_model=None if is_local else base_model,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["expedite", "hf-expedite", "token-clustering", "vision", vanilla_type],
        **{key: base_metadata[key] for key in _LICENSE_KEYS if base_metadata.get(key)},
    )
    shown = Path(base_model).name if is_local else base_model  # never a local absolute path
    origin = "those of the base model" if is_local else f"those of [{base_model}](https://huggingface.co/{base_model})"
    results_md = "\n\n".join(results_table(result) for result in load_results(results))
    remote = (
        "Without importing `hf_expedite`, `trust_remote_code=True` loads the model too (the repository's "
        "`expedite_remote.py` only re-exports the classes of the installed `hf-expedite` package)."
        if remote_code
        else ""
    )
    staged = getattr(settings_holder(config), "depths", None) is not None  # Swin: reconstruction ends its stage
    return Template(Path(template).read_text(encoding="utf-8")).substitute(
        metadata=data.to_yaml(),
        title=f"{repo_id.rsplit('/', 1)[-1]}: {vanilla_type} with Expedite",
        description=(
            f"An expedited version of `{shown}` made with "
            "[hf-expedite](https://pypi.org/project/hf-expedite/): token clustering and reconstruction "
            "(Expedite) run the middle of the encoder on fewer tokens, with the original weights; how much faster "
            "it is depends on the input size and hardware (see the measured results below)."
        ),
        weights_origin=origin,
        usage=_usage(auto_name, repo_id, pipeline_tag),
        remote_code=remote,
        settings_table=settings_table(config),
        reconstruction_end="clustered stage" if staged else "encoder",
        results=results_md or "No evaluation results were provided for this checkpoint.",
        citation=CITATION,
    )
