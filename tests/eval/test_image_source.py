"""An image source's batches: every image once, in order, whatever the decode threads; a size that differs
between the parts of a batch is named."""

from __future__ import annotations

import numpy as np
import pytest

from partialfc.eval.sources import ImageSource, ImageSourceError


def _source(count: int, odd: tuple[int, ...] = ()) -> ImageSource:
    def decode(indices: list[int]) -> np.ndarray:
        return np.stack([np.full((4, 5 if i in odd else 4, 3), i % 256, np.uint8) for i in indices])

    return ImageSource([f"{i}.jpg" for i in range(count)], None, decode, "folder")


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_every_image_once_in_order(threads):
    batches = list(_source(23).batches(5, first=2, stop=21, threads=threads))
    assert [len(b) for b in batches] == [5, 5, 5, 4]
    assert np.concatenate(batches)[:, 0, 0, 0].tolist() == list(range(2, 21))


def test_a_size_that_differs_between_parts_is_named():
    with pytest.raises(ImageSourceError, match=r"folder: 6\.jpg is 4x5, 0\.jpg 4x4"):
        list(_source(10, odd=(6, 7)).batches(10, threads=5))  # parts of two images: 6 and 7 decode together
