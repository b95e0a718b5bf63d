"""Reading a model's safetensors files a piece at a time, with plain file reads: the rows of one tensor
(``read_rows``: a sharded teacher's share, ``lrc.sharded_teacher``) or whole tensors by name, a few in memory at
once (``TensorFiles``: conversion folds a teacher larger than the host's memory, ``lrc.after.convert``).

Not ``safetensors.safe_open``: it maps the whole file, and every page read stays counted in the process's memory
until the file is closed (for a 70B teacher, all of it). The format is simple: an 8-byte little-endian header
length, a JSON header (name -> dtype, shape, data_offsets), then the tensors' bytes, row-major.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor

from lrc.teacher import TeacherError, weight_files

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
"""The floating-point dtypes a teacher's tensors may be stored in."""


def safetensors_index(path: Path, fh) -> tuple[dict, int]:
    """A safetensors file's header (name -> {dtype, shape, data_offsets}) and the offset its data starts at."""
    try:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        raise TeacherError(f"{path}: not a safetensors file ({e})") from e
    header.pop("__metadata__", None)
    return header, 8 + n


def stored_dtype(path: Path, name: str, info: dict) -> torch.dtype:
    dtype = SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
        raise TeacherError(f"{path}: tensor {name} is {info['dtype']}, expected a float dtype")
    return dtype


def read_rows(fh, info: dict, data_start: int, first: int, out: Tensor) -> bool:
    """Read rows ``first .. first + len(out)`` of the tensor ``info`` describes into ``out`` (any dtype: converted;
    a contiguous ``out`` of the stored dtype is read into directly). False if the file ends first."""
    stored = SAFETENSORS_DTYPES[info["dtype"]]
    shape = info["shape"]
    row_bytes = math.prod(shape[1:]) * stored.itemsize
    fh.seek(data_start + info["data_offsets"][0] + first * row_bytes)
    direct = out.dtype == stored and out.is_contiguous()
    buf = out if direct else torch.empty(out.shape, dtype=stored)
    if fh.readinto(buf.view(torch.uint8).numpy().reshape(-1)) != out.shape[0] * row_bytes:
        return False
    if not direct:
        out.copy_(buf)
    return True


class TensorFiles(Mapping):
    """The tensors of a model directory's safetensors files by name, read when asked for (as ``dtype``), the last
    ``keep`` of them kept in memory: for code that reads a model's tensors a few at a time
    (``lrc.generate.generate_student_weights`` one student tensor at a time reads one or two)."""

    def __init__(self, path: str, dtype: torch.dtype = torch.float32, keep: int = 4):
        files = weight_files(path)
        unsafe = [f.name for f in files if f.suffix != ".safetensors"]
        if unsafe:
            raise TeacherError(f"{path}: only safetensors files are read piecewise; it holds {', '.join(unsafe)}")
        self.dtype, self.keep = dtype, keep
        self._where: dict[str, tuple[Path, dict, int]] = {}
        for f in files:
            with open(f, "rb") as fh:
                index, start = safetensors_index(f, fh)
            for name, info in index.items():
                self._where[name] = (f, info, start)
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self.peak_bytes = 0
        """The most bytes of tensors this mapping held at once (the test that it reads piecewise)."""

    def __getitem__(self, name: str) -> Tensor:
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        f, info, start = self._where[name]
        stored_dtype(f, name, info)
        t = torch.empty(info["shape"], dtype=self.dtype)
        with open(f, "rb") as fh:
            if not read_rows(fh, info, start, 0, t):
                raise TeacherError(f"{f}: tensor {name} is truncated (the file ends inside it)")
        self._cache[name] = t
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        self.peak_bytes = max(self.peak_bytes, sum(x.numel() * x.element_size() for x in self._cache.values()))
        return t

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where
