"""Sharing expedited models on the Hub: the folder to push (weights, config, processor, card, remote-code shim).

Every expedited model's ``save_pretrained`` (and so ``push_to_hub``) writes, next to the weights and config, a small
remote-code module ``expedite_remote.py`` and the matching ``auto_map`` in ``config.json`` (:func:`write_remote_code`):
``trust_remote_code=True`` then loads the folder with plain transformers, without ``import hf_expedite``. The shim
only re-exports the installed package's classes; without the package it raises an ``ImportError`` that says
``pip install hf-expedite``. (Expedited classes never copy their own source into a repository.) :func:`save_for_hub`
writes a complete repository folder: that, the image processor and a generated model card.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi
from transformers import PreTrainedConfig

from .auto import TRANSFORMERS_AUTO_CLASSES
from .model_card import render_model_card

REMOTE_MODULE = "expedite_remote"

_SHIM_HEADER = '''"""Lets `trust_remote_code=True` load this Expedite checkpoint with the hf-expedite classes."""

try:
    import hf_expedite
except ImportError as error:
    raise ImportError(
        "This model is an Expedite (token clustering + reconstruction) checkpoint; its classes come from the "
        "hf-expedite package. Install it with `pip install hf-expedite`, then load the model again (with "
        "`import hf_expedite` first, or with trust_remote_code=True)."
    ) from error

'''


def remote_code_classes(config: PreTrainedConfig) -> dict[str, type]:
    """``auto_map`` key -> hf_expedite class for an expedited top-level config; empty when there is none."""
    if type(config).__module__.startswith("transformers."):
        return {}
    classes = {"AutoConfig": type(config)}
    for auto_class in TRANSFORMERS_AUTO_CLASSES:
        mapping = auto_class._model_mapping
        if type(config) in mapping:
            classes[auto_class.__name__] = mapping[type(config)]
    return classes


def write_remote_code(folder: str | Path, config: PreTrainedConfig) -> dict[str, str]:
    """Write ``expedite_remote.py`` and the matching ``auto_map`` into ``folder/config.json``; return the map."""
    folder = Path(folder)
    classes = remote_code_classes(config)
    if not classes:
        return {}
    names = sorted({cls.__name__ for cls in classes.values()})
    source = _SHIM_HEADER + "".join(f"{name} = hf_expedite.{name}\n" for name in names)
    (folder / f"{REMOTE_MODULE}.py").write_text(source, encoding="utf-8")
    auto_map = {key: f"{REMOTE_MODULE}.{cls.__name__}" for key, cls in classes.items()}
    config_path = folder / "config.json"
    config_dict = json.loads(config_path.read_text(encoding="utf-8"))
    config_dict["auto_map"] = auto_map
    config_path.write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return auto_map


def save_for_hub(
    model: Any,
    folder: str | Path,
    *,
    base_model: str,
    repo_id: str | None = None,
    image_processor: Any = None,
    results: str | Path | Mapping[str, Any] | Sequence[Any] | None = None,
    remote_code: bool = True,
    base_metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write everything a Hub repository of ``model`` needs into ``folder`` (created) and return it.

    ``results`` are evaluation/benchmark results for the card (see :func:`hf_expedite.model_card.load_results`);
    ``base_metadata`` is the base model's card metadata (read from the Hub when omitted).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, remote_code=remote_code)
    if image_processor is not None:
        image_processor.save_pretrained(folder)
    auto_map = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("auto_map", {})
    card = render_model_card(
        model.config,
        base_model=base_model,
        repo_id=repo_id or folder.name,
        results=results,
        base_metadata=base_metadata,
        remote_code=bool(auto_map),
    )
    (folder / "README.md").write_text(card, encoding="utf-8")
    return folder


def upload_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload Expedite model",
) -> CommitInfo:
    """Create ``repo_id`` (if needed) and upload ``folder`` to it; return the commit (``.commit_url``, ...)."""
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message=commit_message)
