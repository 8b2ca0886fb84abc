"""Real photographs bundled with scikit-image, preprocessed for a model: the benchmark's default inputs."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "camera")


def photograph(name: str) -> Image.Image:
    """One of scikit-image's bundled photographs as an RGB PIL image."""
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return Image.fromarray(image[..., :3])


def photo_batch(
    height: int,
    width: int,
    batch_size: int = 1,
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
    std: tuple[float, float, float] = (0.5, 0.5, 0.5),
) -> torch.Tensor:
    """``(batch_size, 3, height, width)`` normalised pixel values from the bundled photographs (cycled)."""
    images = []
    for index in range(batch_size):
        image = photograph(PHOTOGRAPHS[index % len(PHOTOGRAPHS)]).resize((width, height), Image.BICUBIC)
        array = (np.asarray(image, dtype=np.float32) / 255.0 - np.array(mean)) / np.array(std)
        images.append(torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1))
    return torch.stack(images)
