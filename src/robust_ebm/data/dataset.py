"""`ImageDataset`: uint8 images and int64 labels held in memory, plus stratified splits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UserError

__all__ = ["ImageDataset", "split_train_val", "stratified_split_indices"]


@dataclass(frozen=True)
class ImageDataset:
    """A whole split of an image dataset, in memory.

    Attributes:
        images: uint8 tensor (N, C, H, W), pixel values 0..255.
        labels: int64 tensor (N,), values in [0, num_classes).
        num_classes: Number of classes K.
        name: Dataset name (``fashion_mnist``, or the stem of a .npz file).
        mean: Per-channel mean in [0, 1] units, for the model's in-model normalization.
        std: Per-channel standard deviation in [0, 1] units.

    Raises:
        UserError: On construction, if dtypes, shapes, lengths or label values are wrong.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}"
        if not isinstance(self.images, Tensor) or self.images.dtype != torch.uint8:
            got = getattr(self.images, "dtype", type(self.images).__name__)
            raise UserError(
                f"{where}: images must be a uint8 tensor (values 0..255); got {got}. "
                "Convert with (x * 255).round().to(torch.uint8) if they are floats in [0, 1]"
            )
        if self.images.dim() != 4:
            raise UserError(
                f"{where}: images must have shape (N, C, H, W); got {tuple(self.images.shape)}. "
                "Add a channel axis with images.unsqueeze(1) for grey images"
            )
        if not isinstance(self.labels, Tensor) or self.labels.dtype != torch.int64:
            got = getattr(self.labels, "dtype", type(self.labels).__name__)
            raise UserError(f"{where}: labels must be an int64 tensor; got {got}. Use .long()")
        if self.labels.dim() != 1 or len(self.labels) != len(self.images):
            raise UserError(
                f"{where}: labels must have shape ({len(self.images)},) to match the images; "
                f"got {tuple(self.labels.shape)}. Pass one label per image"
            )
        if int(self.num_classes) < 1:
            raise UserError(f"{where}: num_classes must be >= 1; got {self.num_classes}")
        if len(self.labels) and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes
        ):
            raise UserError(
                f"{where}: labels must lie in [0, {self.num_classes}); got "
                f"[{int(self.labels.min())}, {int(self.labels.max())}]. "
                "Remap the labels or raise num_classes"
            )
        c = self.images.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise UserError(
                f"{where}: mean and std need one value per channel ({c}); "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise UserError(f"{where}: std must be > 0; got {self.std}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: Tensor | Sequence[int]) -> ImageDataset:
        """A new dataset with the samples at ``indices`` (same metadata)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(
            self.images[idx], self.labels[idx], self.num_classes, self.name, self.mean, self.std
        )


def stratified_split_indices(
    labels: Tensor, val_size: float, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Seeded stratified split of ``range(len(labels))`` into (keep, held_out) sorted indices.

    Args:
        labels: int64 labels (N,).
        val_size: Held-out size: a count (int) or a fraction in (0, 1) (float).
        seed: Seed of the torch.Generator; the split does not touch the global RNG.

    Each class gives its share of the held-out set; the per-class counts are rounded with the
    largest-remainder rule so they sum to exactly ``val_size`` (or ``round(val_size * N)``).
    """
    n = len(labels)
    if isinstance(val_size, float) and not isinstance(val_size, bool):
        if not 0.0 < val_size < 1.0:
            raise UserError(f"val_size as a fraction must be in (0, 1); got {val_size}")
        n_val = round(val_size * n)
    else:
        n_val = int(val_size)
    if not 0 < n_val < n:
        raise UserError(f"val_size must leave both parts non-empty (N = {n}); got {val_size}")
    gen = torch.Generator().manual_seed(int(seed))
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n_val / n
    quota = exact.floor().long()
    short = n_val - int(quota.sum())
    if short > 0:  # largest remainders first; ties broken by class order (stable sort)
        order = torch.sort(exact - quota, descending=True, stable=True).indices
        quota[order[:short]] += 1
    held: list[Tensor] = []
    for cls, k in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        held.append(members[torch.randperm(len(members), generator=gen)[:k]])
    held_idx = torch.sort(torch.cat(held)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask).flatten(), held_idx


def split_train_val(
    dataset: ImageDataset, val_size: float, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Hold out a seeded, stratified validation set from a training set.

    Args:
        dataset: The training split.
        val_size: Number of validation samples (int) or fraction of the dataset (float).
        seed: Seed; the same seed gives the same split on every machine.

    Returns:
        (train, val), disjoint, together covering ``dataset``; class proportions preserved.
    """
    keep, held = stratified_split_indices(dataset.labels, val_size, seed)
    return dataset.subset(keep), dataset.subset(held)
