"""The 8x8 handwritten digits that scikit-learn ships (no download): the default few-shot source.

1797 images of the ten digits, about 180 per class, from the UCI "Optical Recognition of
Handwritten Digits" data set (Alpaydin, Kaynak 1998,
https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits),
as `sklearn.datasets.load_digits` returns them.
"""

import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as images.

    Returns:
      `(x, y)`: float32 images in [0, 1] of shape `(1797, 8, 8, 1)` (the 0..16 grey levels
      divided by 16) and int32 labels `(1797,)` in 0..9.

    Example:
      >>> x, y = metax.data.load_digits()
      >>> x.shape, x.dtype, float(x.max()), y.shape, sorted(set(y.tolist()))
      ((1797, 8, 8, 1), dtype('float32'), 1.0, (1797,), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    from sklearn.datasets import load_digits as sklearn_digits  # imported on use: sklearn is slow to import

    digits = sklearn_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    return x, digits.target.astype(np.int32)
