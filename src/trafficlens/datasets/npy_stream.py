"""Append rows to a `.npy` file without holding the array in memory.

NumPy has no appendable `.npy` writer; a fixed-size header that is rewritten with the final row
count when the file is closed gives one, and the result is a plain `.npy` that `np.load(...,
mmap_mode="r")` opens.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_MAGIC = b"\x93NUMPY\x01\x00"
_HEADER_BYTES = 128  # magic + length + dict, padded: room for any realistic shape, 64-aligned


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (
        np.lib.format.dtype_to_descr(dtype),
        shape,
    )
    room = _HEADER_BYTES - len(_MAGIC) - 2
    body = text.ljust(room - 1).encode("latin1") + b"\n"
    if len(body) != room:
        raise ValueError(f"shape {shape} too long for a {_HEADER_BYTES}-byte .npy header")
    return _MAGIC + (room).to_bytes(2, "little") + body


class NpyAppender:
    """Write rows of a fixed trailing shape to `path`; `close()` fixes the row count."""

    def __init__(self, path: str | os.PathLike, dtype: np.dtype | str, row_shape: tuple[int, ...]):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.rows = 0
        self._file = open(self.path, "wb")
        self._file.write(_header(self.dtype, (0, *self.row_shape)))

    def append(self, block: np.ndarray) -> None:
        """Append `block` of shape (n, *row_shape)."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {block.shape[1:]}, expected {self.row_shape}")
        self._file.write(block.tobytes())
        self.rows += block.shape[0]

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.write(_header(self.dtype, (self.rows, *self.row_shape)))
        self._file.close()
