"""Dataset loading / batching, multi-process sharding and gathering, and reports."""

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import skimage.data

from hf_expedite.evaluation import (
    PARQUET_REVISION,
    ImageBatches,
    ModelResult,
    SkippedSample,
    gather_by_index,
    load_eval_dataset,
    markdown_report,
    num_samples,
    shard_indices,
    write_report,
)
from hf_expedite.evaluation.distributed import _merge

REPO_ROOT = Path(__file__).resolve().parents[1]
MISSING_DEPTH = r"lacks column\(s\) \['depth'\]; available columns: \['image', 'mask', 'label'\]"


def _encoded(array: np.ndarray, fmt: str = "PNG", size: tuple = (24, 16)) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).resize(size).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo_dataset() -> datasets.Dataset:
    """Five small real photographs (one grayscale); index 2 is a truncated JPEG. `mask` is a mode-L image."""
    jpeg = _encoded(skimage.data.chelsea(), "JPEG")
    images = [
        _encoded(skimage.data.astronaut()),
        _encoded(skimage.data.coffee(), "JPEG"),
        jpeg[: len(jpeg) // 2],
        _encoded(skimage.data.camera()),
        jpeg,
    ]
    mask = _encoded(np.arange(64, dtype=np.uint8).reshape(8, 8), size=(24, 16))
    features = datasets.Features(
        {"image": datasets.Image(), "mask": datasets.Image(), "label": datasets.Value("int64")}
    )
    return datasets.Dataset.from_dict(
        {
            "image": [{"bytes": b, "path": None} for b in images],
            "mask": [{"bytes": mask, "path": None}] * len(images),
            "label": list(range(10, 15)),
        },
        features=features,
    )


# ---------------------------------------------------------------- datasets_io


def test_corrupt_image_is_skipped_and_reported(photo_dataset):
    loader = ImageBatches(photo_dataset, batch_size=2, columns=["label", "mask"], progress=False)
    with pytest.warns(UserWarning, match="Skipping dataset index 2: column 'image'"):
        batches = list(loader)
    assert [batch.indices for batch in batches] == [[0, 1], [3, 4]]
    assert [batch.columns["label"] for batch in batches] == [[10, 11], [13, 14]]
    assert all(image.mode == "RGB" and image.size == (24, 16) for batch in batches for image in batch.images)
    assert all(mask.mode == "L" for batch in batches for mask in batch.columns["mask"])
    assert len(loader.skipped) == 1
    skipped = loader.skipped[0]
    assert isinstance(skipped, SkippedSample) and (skipped.index, skipped.column) == (2, "image")
    assert skipped.error.startswith("OSError") and "truncated" in skipped.error.lower()


def test_batches_follow_indices(photo_dataset):
    loader = ImageBatches(photo_dataset, batch_size=3, indices=[4, 0, 3], progress=False)
    assert [batch.indices for batch in loader] == [[4, 0, 3]]
    assert loader.num_samples == 3 and loader.skipped == []


def test_missing_columns_are_reported(photo_dataset):
    with pytest.raises(ValueError, match=MISSING_DEPTH):
        ImageBatches(photo_dataset, columns=["depth"])


@pytest.fixture(scope="module")
def parquet_export(tmp_path_factory, photo_dataset) -> Path:
    """A local folder laid out like the hub's refs/convert/parquet export: <config>/<split>/0000.parquet."""
    root = tmp_path_factory.mktemp("export")
    for config in ("default", "small"):
        (root / config / "validation").mkdir(parents=True)
        photo_dataset.to_parquet(str(root / config / "validation" / "0000.parquet"))
    return root


def test_load_eval_dataset(parquet_export):
    dataset = load_eval_dataset(
        str(parquet_export), config="small", revision=PARQUET_REVISION, columns=["image", "label"], max_samples=3
    )
    assert isinstance(dataset, datasets.Dataset) and num_samples(dataset) == 3
    assert dataset["label"] == [10, 11, 12]
    with pytest.raises(ValueError, match=MISSING_DEPTH):
        load_eval_dataset(str(parquet_export), revision=PARQUET_REVISION, columns=["image", "depth"])


def test_streaming_dataset(parquet_export):
    stream = load_eval_dataset(str(parquet_export), revision=PARQUET_REVISION, streaming=True, columns=["image"])
    assert isinstance(stream, datasets.IterableDataset)
    loader = ImageBatches(stream, batch_size=4, indices=[1, 2, 3], progress=False)
    with pytest.warns(UserWarning, match="index 2"):
        assert [batch.indices for batch in loader] == [[1, 3]]
    assert [s.index for s in loader.skipped] == [2]
    head = load_eval_dataset(str(parquet_export), streaming=True, max_samples=2, data_dir="small")
    assert [row["label"] for row in head] == [10, 11]
    assert num_samples(head) in (2, None)  # a stream knows its size only from metadata (here: cache) if at all


# ---------------------------------------------------------------- distributed


@pytest.mark.parametrize("strategy", ["contiguous", "strided"])
def test_shard_indices_partition(strategy):
    for num_items, num_processes in [(7, 2), (7, 3), (1, 2), (0, 2), (9, 4)]:
        shards = [shard_indices(num_items, strategy=strategy, num_processes=num_processes, process_index=p)
                  for p in range(num_processes)]
        assert sorted(i for shard in shards for i in shard) == list(range(num_items))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shard_indices(7, num_processes=3, process_index=0) == [0, 1, 2]
    assert shard_indices(7, strategy="strided", num_processes=3, process_index=1) == [1, 4]
    with pytest.raises(ValueError):
        shard_indices(7, num_processes=2, process_index=2)


def test_gather_single_process_and_duplicates():
    assert list(gather_by_index({3: "c", 0: "a", 1: "b"})) == [0, 1, 3]
    with pytest.raises(ValueError, match="index 1 was produced by more than one process"):
        _merge([{0: "a", 1: "b"}, {1: "b"}])


GATHER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from hf_expedite.evaluation import gather_by_index, get_state, shard_indices, shutdown

    state = get_state()
    out = {"num_processes": state.num_processes, "backend": state.backend}
    for strategy in ("contiguous", "strided"):
        # Arrays of different shapes and dtypes per dataset index, 7 items over the processes (uneven).
        local = {i: np.full((i + 1, 2), i, dtype=np.int16 if i % 2 else np.float32)
                 for i in shard_indices(7, strategy=strategy)}
        gathered = gather_by_index(local)
        everywhere = gather_by_index(local, all_processes=True)
        out[strategy] = {
            "local": sorted(local),
            "keys": list(gathered),
            "values": [[v.dtype.name, v.tolist()] for v in gathered.values()],
            "all_processes_keys": list(everywhere),
        }
    with open(f"{sys.argv[1]}/rank{state.process_index}.json", "w") as f:
        json.dump(out, f)
    shutdown()
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list, tmp_path: Path) -> None:
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    # ACCELERATE_USE_CPU: CPU processes (gloo) even on a GPU machine, where rank 1 may have no GPU of its own.
    env = {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    completed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_gather_under_accelerate_launch(tmp_path):
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir()
    multi.mkdir()
    _run([sys.executable, str(script), str(single)], tmp_path)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    _run(launch + [str(script), str(multi)], tmp_path)

    reference = json.loads((single / "rank0.json").read_text())
    main, other = (json.loads((multi / f"rank{r}.json").read_text()) for r in (0, 1))
    assert reference["num_processes"] == 1
    assert main["num_processes"] == 2 and main["backend"] == "gloo"
    assert main["contiguous"]["local"] == [0, 1, 2, 3] and other["contiguous"]["local"] == [4, 5, 6]
    assert main["strided"]["local"] == [0, 2, 4, 6] and other["strided"]["local"] == [1, 3, 5]
    for strategy in ("contiguous", "strided"):
        assert main[strategy]["keys"] == list(range(7))
        assert main[strategy]["values"] == reference[strategy]["values"]
        assert other[strategy]["keys"] == []  # gathered on the main process only
        assert main[strategy]["all_processes_keys"] == other[strategy]["all_processes_keys"] == list(range(7))


# ---------------------------------------------------------------- report


def test_report(tmp_path):
    vanilla = ModelResult(
        metrics={"mean_iou": 0.5, "overall_accuracy": np.float64(0.8), "per_category_iou": np.array([0.5, np.nan])},
        images_per_second=10.0,
        latency_ms=100.0,
        num_images=4,
    )
    expedited = ModelResult(
        metrics={"mean_iou": 0.49, "overall_accuracy": 0.78, "per_category_iou": np.array([0.49, np.nan])},
        images_per_second=15.0,
        latency_ms=66.0,
        num_images=4,
        details={"skipped": [2]},
    )
    markdown_path, json_path = write_report(
        vanilla, expedited, tmp_path / "out", stem="ade", title="ADE20k", metadata={"model": "tiny"}
    )
    markdown = markdown_path.read_text()
    assert markdown == markdown_report(vanilla, expedited, title="ADE20k", metadata={"model": "tiny"})
    assert "| metric | vanilla | expedited | expedited / vanilla |" in markdown
    assert "| mean_iou | 0.5000 | 0.4900 | 0.980 |" in markdown
    assert "| images/s | 10.00 | 15.00 | 1.500 |" in markdown
    assert "| latency (ms/image) | 100.00 | 66.00 | 0.660 |" in markdown
    assert "per_category_iou" not in markdown and "- model: tiny" in markdown
    payload = json.loads(json_path.read_text())
    assert payload["ratios"]["mean_iou"] == pytest.approx(0.98)
    assert payload["ratios"]["images/s"] == pytest.approx(1.5)
    assert payload["vanilla"]["metrics"]["per_category_iou"] == [0.5, None]
    assert payload["expedited"]["details"] == {"skipped": [2]}
