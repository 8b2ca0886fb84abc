"""Expedite a model and share it on the Hub: weights, config, image processor, model card and remote-code shim.

Examples::

    python scripts/push_to_hub.py Intel/dpt-large me/dpt-large-expedited
    python scripts/push_to_hub.py Intel/dpt-large me/dpt-large-expedited --expedite '{"clustering_location": 8}'
    python scripts/push_to_hub.py google/vit-large-patch16-224 me/vit-exp --expedite default --clustering-location 8 \\
        --results eval_results/report.json --private
    python scripts/push_to_hub.py ./my-vit --output-dir ./my-vit-expedited      # only write the folder

``--expedite`` is a preset name or a JSON dict of settings (default: the architecture's ``default`` preset); each
setting also has its own flag (``--clustering-location 8``, ``--num-clusters '[16, 16]'``), applied over the preset or
dict; flag values are JSON when they parse (numbers, lists, booleans, null), else strings.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from hf_expedite_cli.options import SETTING_FLAGS


def _value(text: str) -> Any:
    """A flag value: JSON when it parses (numbers, lists, booleans, null), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _expedite(text: str) -> Any:
    """``--expedite``: a JSON object of settings, ``true``/``false``, or a preset name."""
    value = _value(text)
    return value if isinstance(value, (dict, bool)) else text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="base model: a Hub id or a local folder (vanilla or already expedited)")
    parser.add_argument("repo_id", nargs="?", help="target Hub repository, e.g. me/dpt-large-expedited")
    parser.add_argument("--expedite", type=_expedite, default=True, help="preset name or JSON dict of settings")
    settings = parser.add_argument_group("Expedite settings (override --expedite)")
    for name in SETTING_FLAGS:
        settings.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_value, metavar="VALUE")
    parser.add_argument("-o", "--output-dir", help="write the repository folder here and do not upload")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.add_argument("--revision", help="revision of the base model")
    parser.add_argument("--results", nargs="*", default=[], help="evaluation/benchmark JSON files for the card")
    parser.add_argument("--no-remote-code", action="store_true", help="do not write the trust_remote_code shim")
    args = parser.parse_args(argv)
    if args.repo_id is None and args.output_dir is None:
        parser.error("give a target repo_id, or --output-dir to only write the folder")
    missing = [path for path in args.results if not Path(path).is_file()]
    if missing:
        parser.error(f"--results: no such file: {', '.join(missing)}")
    if args.output_dir and Path(args.base).exists() and Path(args.output_dir).resolve() == Path(args.base).resolve():
        parser.error("--output-dir is the base model's folder: writing there would replace the base model")
    if args.output_dir and Path(args.output_dir).is_file():
        parser.error(f"--output-dir {args.output_dir} is a file, not a folder")
    return args


def _write(args: argparse.Namespace, settings: dict[str, Any], folder: str) -> None:
    from transformers import AutoConfig, AutoImageProcessor

    from hf_expedite.auto import auto_class_for
    from hf_expedite.hub import save_for_hub

    hub_kwargs = {"token": args.token, "revision": args.revision}
    auto_class = auto_class_for(AutoConfig.from_pretrained(args.base, **hub_kwargs))
    model = auto_class.from_pretrained(args.base, expedite=args.expedite, **settings, **hub_kwargs)
    try:
        image_processor = AutoImageProcessor.from_pretrained(args.base, **hub_kwargs)
    except (OSError, ValueError) as error:
        image_processor = None
        print(f"warning: the base model has no image processor to save ({error})", file=sys.stderr)
    save_for_hub(
        model,
        folder,
        base_model=args.base,
        repo_id=args.repo_id,
        image_processor=image_processor,
        results=args.results,
        remote_code=not args.no_remote_code,
    )


def main(argv: list[str] | None = None) -> str:
    """Run the script; return the folder written (with --output-dir) or the commit URL."""
    args = parse_args(argv)  # before the heavy imports: --help and a bad option answer at once
    from hf_expedite.conversion import parse_request

    settings = {name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name) is not None}
    if parse_request(args.expedite, settings).enabled is False:  # bad settings fail here, before any download
        sys.exit("--expedite false would push the vanilla model unchanged; nothing to do.")
    try:
        if args.output_dir:
            _write(args, settings, args.output_dir)
            print(f"wrote {args.output_dir}")
            return args.output_dir
        from hf_expedite.hub import upload_to_hub

        with tempfile.TemporaryDirectory(prefix="hf_expedite_push_") as folder:
            _write(args, settings, folder)
            commit = upload_to_hub(folder, args.repo_id, private=args.private or None, token=args.token)
    except (OSError, ValueError) as error:  # a missing folder or repository, no access, bad settings: one line
        sys.exit(f"error: {error}")
    print(f"pushed {args.repo_id}: {commit.commit_url}")
    return commit.commit_url


if __name__ == "__main__":
    main()
