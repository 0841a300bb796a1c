"""Data: official-format readers, a checksummed catalog, downloads and a tensor-resident loader.

>>> from robust_ebm.data import load_dataset, TensorLoader, Augment
>>> train = load_dataset("digits", "train")          # no files needed
>>> loader = TensorLoader(train, batch_size=64, augment=Augment(crop_padding=1, flip=False))
>>> x, y = next(iter(loader))                        # float32 in [0, 1], int64
"""

from .catalog import CATALOG, DatasetInfo, RemoteFile, get_info, list_datasets
from .dataset import ImageDataset, split_train_val
from .download import download_dataset
from .imagenette import read_imagenette
from .loader import Augment, TensorLoader
from .locate import cache_dir, dataset_status, load_dataset, verify_dataset
from .readers import (
    read_cifar,
    read_digits,
    read_idx,
    read_idx_split,
    read_npz,
    read_svhn,
    read_tiny_imagenet,
)

__all__ = [
    "CATALOG",
    "Augment",
    "DatasetInfo",
    "ImageDataset",
    "RemoteFile",
    "TensorLoader",
    "cache_dir",
    "dataset_status",
    "download_dataset",
    "get_info",
    "list_datasets",
    "load_dataset",
    "read_cifar",
    "read_digits",
    "read_idx",
    "read_idx_split",
    "read_imagenette",
    "read_npz",
    "read_svhn",
    "read_tiny_imagenet",
    "split_train_val",
    "verify_dataset",
]
