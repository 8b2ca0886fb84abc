"""Loading evaluation datasets with `datasets` and iterating over them in batches of decoded RGB images.

Images are decoded here rather than by `datasets`, so that an undecodable (corrupt) image is reported with its
dataset index and skipped instead of crashing the evaluation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import datasets
import numpy as np
import PIL.Image
from tqdm.auto import tqdm

from hf_expedite_cli.options import PARQUET_REVISION

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """An input image as 8-bit RGB, without clipping.

    16-bit images (modes ``I;16*``, and ``I`` holding 0..65535, how PIL opens 16-bit PNGs) are scaled by 255 / 65535:
    ``convert("RGB")`` would clip every value above 255 to white. Floating-point images (mode ``F``) and 32-bit
    integers beyond 16 bits have no defined colour range and raise a ``ValueError`` saying so.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"a 32-bit integer image (mode {image.mode}) with values in [{values.min()}, {values.max()}] has no "
                "defined colour range; convert it to 8-bit RGB first."
            )
        scaled = np.round(values * (255.0 / 65535.0)).astype(np.uint8)
        return PIL.Image.fromarray(scaled).convert("RGB")  # uint8: mode L
    if image.mode == "F":
        raise ValueError(
            "a floating-point image (mode F) has no defined colour range; convert it to 8-bit RGB first."
        )
    return image.convert("RGB")

AnyDataset = datasets.Dataset | datasets.IterableDataset


def check_columns(available: Iterable[str], required: Sequence[str], what: str) -> None:
    """Raise a ValueError naming the missing columns and the available ones."""
    available = list(available)
    missing = [column for column in required if column not in available]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; available columns: {available}.")


def _describe(name: str, config: str | None, split: str, revision: str | None) -> str:
    parts = [name] + [f"{key}={value}" for key, value in (("config", config), ("revision", revision)) if value]
    return f"Dataset {' '.join(parts)} (split {split!r})"


def load_eval_dataset(
    name: str,
    *,
    config: str | None = None,
    split: str = "validation",
    columns: Sequence[str] = (),
    streaming: bool = False,
    revision: str | None = None,
    max_samples: int | None = None,
    **load_kwargs: Any,
) -> AnyDataset:
    """Load one split of a hub (or local) dataset and check that `columns` exist.

    `name` is a hub id, a local folder of data files (e.g. Parquet) or a folder written by `save_to_disk` (a
    `Dataset`, or a `DatasetDict` from which `split` is taken). With `revision="refs/convert/parquet"` (the hub's
    automatic Parquet export, the way to read script-based datasets that `datasets` no longer runs) the config is
    selected as the export's sub-directory (`data_dir`), defaulting to "default". When the dataset's features are
    known from its metadata, the columns are checked before any data is downloaded; they are always checked on the
    loaded split. `max_samples` keeps the first samples. Extra kwargs (`token`, `cache_dir`, `data_files`,
    `data_dir`) go to `datasets.load_dataset_builder` and `datasets.load_dataset`.
    """
    what = _describe(name, config, split, revision)
    if _saved_to_disk(name):
        dataset = _load_from_disk(name, split, what)
    else:
        if revision == PARQUET_REVISION:
            load_kwargs.setdefault("data_dir", config or "default")
            config = None
        features = datasets.load_dataset_builder(name, config, revision=revision, **load_kwargs).info.features
        if features is not None:
            check_columns(features, columns, what)
        dataset = datasets.load_dataset(
            name, config, split=split, streaming=streaming, revision=revision, **load_kwargs
        )
    check_columns(_column_names(dataset), columns, what)
    if max_samples is None:
        return dataset
    if isinstance(dataset, datasets.Dataset):
        return dataset.select(range(min(max_samples, len(dataset))))
    return _take(dataset, max_samples)


def _saved_to_disk(name: str) -> bool:
    """Whether `name` is a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    folder = Path(name)
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _load_from_disk(name: str, split: str, what: str) -> datasets.Dataset:
    """A `save_to_disk` folder as a Dataset: the folder's Dataset, or `split` of its DatasetDict."""
    loaded = datasets.load_from_disk(name)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{what}: no split {split!r} in the saved DatasetDict; available: {list(loaded)}.")
        return loaded[split]
    return loaded


def _take(stream: datasets.IterableDataset, count: int) -> datasets.IterableDataset:
    """The first `count` samples of a stream, with its split size (when known) updated to match."""
    total = num_samples(stream)
    taken = stream.take(count)
    if total is not None:
        size = datasets.SplitInfo(name=taken.split, num_examples=min(count, total))
        taken.info.splits = datasets.SplitDict({taken.split: size})
    return taken


def _column_names(dataset: AnyDataset) -> list[str]:
    """Column names, peeking at the first example of a stream whose features are unknown."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset), {}))


def num_samples(dataset: AnyDataset) -> int | None:
    """Number of samples: `len` for a map-style dataset, the split metadata (if any) for a stream."""
    if isinstance(dataset, datasets.Dataset):
        return len(dataset)
    splits = dataset.info.splits
    if splits and dataset.split in splits and splits[dataset.split].num_examples:
        return splits[dataset.split].num_examples
    return None


@dataclass(frozen=True)
class SkippedSample:
    """A sample left out of the evaluation because one of its images is missing or could not be decoded."""

    index: int
    column: str
    error: str


@dataclass
class Batch:
    """Decoded samples: dataset indices, RGB images and the requested other columns (image columns decoded)."""

    indices: list[int] = field(default_factory=list)
    images: list[PIL.Image.Image] = field(default_factory=list)
    columns: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)


class ImageBatches:
    """Iterate over `dataset` in batches of decoded samples, skipping samples with an undecodable image.

    `image_column` is decoded and converted to RGB; every other requested column that holds images (e.g. a depth
    or segmentation map) is decoded keeping its mode. `indices` restricts and orders the samples (for a stream:
    positions in the stream, kept in stream order; each process of a sharded run reads the stream up to its last
    index). Skipped samples raise a warning and are listed in `self.skipped` (dataset index, column, error) for the
    latest pass; every batch except the last holds `batch_size` samples.
    """

    def __init__(
        self,
        dataset: AnyDataset,
        *,
        batch_size: int = 1,
        image_column: str = "image",
        columns: Sequence[str] = (),
        indices: Sequence[int] | None = None,
        progress: bool = True,
        desc: str = "evaluating",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        names = list(dict.fromkeys([image_column, *columns]))
        check_columns(_column_names(dataset), names, "Dataset")
        features = dataset.features or {}
        self.image_column = image_column
        self.columns = list(columns)
        # Image columns -> decoding mode; undecoded here so that a failure can be caught per sample.
        self.image_modes: dict[str, str | None] = {image_column: None}
        for name in names:
            if isinstance(features.get(name), datasets.Image):
                self.image_modes[name] = features[name].mode
                dataset = dataset.cast_column(name, datasets.Image(mode=features[name].mode, decode=False))
        self.dataset = dataset.select_columns(names)
        self.batch_size = batch_size
        self.indices = None if indices is None else list(indices)
        self.progress = progress
        self.desc = desc
        self.skipped: list[SkippedSample] = []

    @property
    def num_samples(self) -> int | None:
        """Number of samples to visit (before skipping); None for a stream of unknown length."""
        return len(self.indices) if self.indices is not None else num_samples(self.dataset)

    def _rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(dataset index, raw row) pairs."""
        if isinstance(self.dataset, datasets.Dataset):
            indices = self.indices if self.indices is not None else range(len(self.dataset))
            for start in range(0, len(indices), self.batch_size):
                chunk = list(indices[start : start + self.batch_size])
                rows = self.dataset[chunk]
                for offset, index in enumerate(chunk):
                    yield index, {name: values[offset] for name, values in rows.items()}
            return
        wanted = None if self.indices is None else set(self.indices)
        last = None if self.indices is None else max(self.indices, default=-1)
        for index, row in enumerate(self.dataset):
            if last is not None and index > last:
                return
            if wanted is None or index in wanted:
                yield index, row

    def _decode(self, index: int, row: dict[str, Any]) -> dict[str, Any] | None:
        """Decode the image columns of one row; record the sample as skipped and return None on failure."""
        decoded = dict(row)
        for name, mode in self.image_modes.items():
            value = row[name]
            if isinstance(value, bytes):
                value = {"bytes": value, "path": None}
            try:
                if value is None or (isinstance(value, dict) and not value.get("bytes") and not value.get("path")):
                    raise ValueError("missing value (null)")
                image = datasets.Image(mode=mode).decode_example(value)
                decoded[name] = to_rgb(image) if name == self.image_column else image
            except Exception as error:  # noqa: BLE001 - any failure skips this one sample, never the run
                skipped = SkippedSample(index, name, f"{type(error).__name__}: {error}")
                self.skipped.append(skipped)
                warnings.warn(
                    f"Skipping dataset index {index}: column {name!r} is not a decodable image ({skipped.error}).",
                    stacklevel=2,
                )
                return None
        return decoded

    def __iter__(self) -> Iterator[Batch]:
        self.skipped = []
        batch = Batch(columns={name: [] for name in self.columns})
        rows = tqdm(self._rows(), total=self.num_samples, desc=self.desc, disable=not self.progress, unit="img")
        for index, row in rows:
            decoded = self._decode(index, row)
            if decoded is None:
                continue
            batch.indices.append(index)
            batch.images.append(decoded[self.image_column])
            for name in self.columns:
                batch.columns[name].append(decoded[name])
            if len(batch) == self.batch_size:
                yield batch
                batch = Batch(columns={name: [] for name in self.columns})
        if len(batch):
            yield batch
