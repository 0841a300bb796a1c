"""A replay buffer for SGLD: continue the chains of an earlier ``robust-ebm generate`` run
(persistent chains, JEM-style restarts; docs/science.md#sgld-initialisations).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..attacks.streams import SampleStreams
from ..errors import UserError
from .init_base import INITS, Init, RandomSource, _by_class, _index_in_class, _uniform01


def load_buffer(path: str | os.PathLike[str]) -> tuple[Tensor, Tensor]:
    """Samples ``x`` (M, C, H, W) and classes ``y`` (M,) of a ``samples.npz`` written by
    ``robust-ebm generate``, read without unpickling; x as float32 in [0, 1].

    Raises:
        UserError: a missing or unreadable file, or one without x/y of the expected form.
    """
    import zipfile

    import numpy as np

    where = f"buffer {path}"
    if not os.path.isfile(path):
        raise UserError(f"{where}: file not found")
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and say so
        raise UserError(f"{where}: not a .npz archive (give the samples.npz of an earlier "
                        "robust-ebm generate run)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise UserError(f"{where}: needs arrays 'x' and 'y' (a samples.npz of "
                                f"robust-ebm generate); it holds {sorted(data.files)}")
            x, y = data["x"], data["y"]
    except UserError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{where}: not a readable .npz without pickles ({exc})") from None
    if x.ndim != 4 or x.shape[0] == 0:
        raise UserError(f"{where}: x must have shape (M, C, H, W) with M >= 1; got {x.shape}")
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise UserError(f"{where}: y must be ({x.shape[0]},) integers; got {y.shape} {y.dtype}")
    if y.size and int(y.min()) < 0:
        raise UserError(f"{where}: y has negative classes")
    if x.dtype == np.uint8:
        xt = torch.from_numpy(x.copy()).float().div_(255.0)
    elif x.dtype.kind == "f" and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1:
        xt = torch.from_numpy(x.astype(np.float32))
    else:
        raise UserError(f"{where}: x must be uint8, or float in [0, 1]; got {x.dtype}")
    return xt, torch.from_numpy(y.astype(np.int64))


@INITS.register("buffer", alias="buffer", fitted=False, cached=False)
class BufferInit:
    """A replay buffer (persistent chains, as JEM): x0 of a chain of class c is a sample of
    class c from an earlier run's ``samples.npz``, except with probability ``reinit_freq``
    (JEM's 0.05 by default), where it restarts from ``reinit``.

    (The published generation code's buffer path returns no starting point at all:
    ``get_init_images`` returns two empty lists whenever the buffer is not empty.)

    Each chain draws its coin, its buffer index and its ``reinit`` start from its own stream,
    so its x0 does not depend on the batch.

    Args:
        x, y: the buffer, (M, C, H, W) in [0, 1] and (M,) classes (:func:`load_buffer`).
        reinit: the init of restarted chains (None: U[0, 1] as JEM).
        reinit_freq: probability of a restart, in [0, 1].
        pick: 'random' (a uniformly drawn sample of the class) or 'chain' (chain j takes the
            class's j-th sample, modulo their count: chain j continues chain j).
        source: where the buffer came from, recorded in :meth:`config`.
    """

    name: ClassVar[str] = "buffer"

    def __init__(self, x: Tensor, y: Tensor, reinit: Init | None = None,
                 reinit_freq: float = 0.05, pick: str = "random", source: str = "") -> None:
        if not 0 <= reinit_freq <= 1:
            raise UserError(f"reinit_freq must be a probability in [0, 1]; got {reinit_freq}")
        if pick not in ("random", "chain"):
            raise UserError(f"pick must be 'random' or 'chain'; got {pick!r}")
        if x.dim() != 4 or y.shape != (x.shape[0],) or x.shape[0] == 0:
            raise UserError(f"buffer must be (M, C, H, W) images and (M,) classes, M >= 1; "
                            f"got {tuple(x.shape)}, {tuple(y.shape)}")
        self.x, self.y = x.detach().cpu().float(), y.detach().cpu().long()
        shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        from .init import UniformInit  # init.py re-exports this module's classes

        self.reinit: Init = reinit if reinit is not None else UniformInit(shape)
        self.reinit_freq = float(reinit_freq)
        self.pick = pick
        self.source = source
        self.by_class = {c: idx for c, idx in _by_class(self.y)}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> BufferInit:
        x, y = load_buffer(path)
        return cls(x, y, source=str(path), **kwargs)

    def missing(self, classes: Any) -> list[int]:
        """Classes among ``classes`` the buffer has no sample of."""
        return sorted({int(c) for c in classes} - set(self.by_class))

    def sample(self, y: Tensor, generator: RandomSource = None) -> Tensor:
        rows = torch.arange(y.shape[0])
        restart = _uniform01(rows, generator) < self.reinit_freq
        out = torch.empty((y.shape[0], *self.x.shape[1:]))
        j = _index_in_class(y, generator) if self.pick == "chain" else None
        for c, pos in _by_class(y):
            if c not in self.by_class:
                if bool(restart[pos].all()):
                    continue
                raise UserError(f"the buffer has no sample of class {c}; generate it first "
                                "or use another init")
            pool = self.by_class[c]
            if j is not None:
                k = j[pos] % len(pool)
            elif isinstance(generator, SampleStreams):
                k = generator.integers(pos, 0, len(pool)).cpu()
            else:
                k = torch.randint(len(pool), (len(pos),), generator=generator)
            out[pos] = self.x[pool[k]]
        fresh = self.reinit.sample(y, generator)
        return torch.where(restart.view(-1, 1, 1, 1), fresh, out)

    def config(self) -> dict[str, Any]:
        reinit = self.reinit.config() if hasattr(self.reinit, "config") else str(self.reinit)
        return {"init": self.name, "source": self.source, "size": int(self.x.shape[0]),
                "reinit_freq": self.reinit_freq, "pick": self.pick, "reinit": reinit}


