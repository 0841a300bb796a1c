"""The dataset catalog: official files, URLs, checksums, sizes and normalization constants.

Every downloadable file carries its official MD5. For the idx datasets we also record the MD5 of
the *decompressed* idx content, because redistributors recompress the ``.gz`` files (Debian's
``dataset-fashion-mnist`` does), which changes the gz checksum but not the content. The content
MD5s of Fashion-MNIST were computed from the Debian files, whose content matches upstream (60000
and 10000 samples, labels 0-9); those of MNIST are unknown here and left ``None``.

Mean/std are per channel in [0, 1] units over the training split; models use them for their
in-model normalization (:class:`robust_ebm.models.Normalize`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..registry import Registry

__all__ = ["CATALOG", "DatasetInfo", "RemoteFile", "get_info", "list_datasets"]


@dataclass(frozen=True)
class RemoteFile:
    """One official file: its name, where to get it and its checksums.

    Attributes:
        filename: The official file name (``train-images-idx3-ubyte.gz``).
        url: The official download URL.
        md5: MD5 of the file as published upstream.
        content_md5: MD5 of the decompressed content for ``.gz`` files, else ``None``.
    """

    filename: str
    url: str
    md5: str
    content_md5: str | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one dataset.

    Attributes:
        name: Catalog name (``fashion_mnist``).
        format: A registered format (:data:`robust_ebm.data.readers.FORMATS`): ``idx``,
            ``cifar10``, ``cifar100``, ``svhn``, ``tiny_imagenet`` (the ``image``/``label``
            ``.npz`` repack), ``imagenette`` (fast.ai's ``.tgz`` of JPEGs) or ``digits``.
        num_classes: Number of classes K; labels are in [0, K).
        shape: (C, H, W) of one image.
        mean: Per-channel mean in [0, 1] units (training split).
        std: Per-channel standard deviation in [0, 1] units (training split).
        files: The official downloadable files.
        splits: For each split, the names of the files in ``files`` it is read from.
        sizes: Expected number of samples per split.
        homepage: Where the dataset is described.
    """

    name: str
    format: str
    num_classes: int
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: tuple[RemoteFile, ...] = ()
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    homepage: str = ""

    def file(self, filename: str) -> RemoteFile:
        """The :class:`RemoteFile` called ``filename``."""
        for f in self.files:
            if f.filename == filename:
                return f
        raise KeyError(filename)


_IDX_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _idx_files(base: str, md5s: dict[str, tuple[str, str | None]]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(n, base + n, md5, content) for n, (md5, content) in md5s.items())


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_KRIZ_URL = "https://www.cs.toronto.edu/~kriz/"
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
# the Tiny-ImageNet-200 repack read by the ECCV 2024 code (arXiv 2407.06315, load_tiny_imagenet.py)
_TINY_URL = "https://huggingface.co/wzekai99/DM-Improves-AT/resolve/main/others/dataset/tiny-imagenet-200/"
# fast.ai's Imagenette, the 160 px archive the Beadini & Masi notebooks read (arXiv 2304.04033).
# MD5 of the whole file as torchvision's Imagenette dataset records it (pytorch/vision,
# torchvision/datasets/imagenette.py); fastai's own checks.txt lists 99003388 bytes and the MD5 of
# the first MiB only (c475f8f7617a200ba35b9facc48443c3), not comparable with a whole-file MD5.
_IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/"

_DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        format="idx",
        num_classes=10,
        shape=(1, 28, 28),
        mean=(0.1307,),
        std=(0.3081,),
        files=_idx_files(
            _MNIST_URL,
            {
                "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", None),
                "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", None),
                "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3", None),
                "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c", None),
            },
        ),
        splits=_IDX_NAMES,
        sizes={"train": 60000, "test": 10000},
        homepage="http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        format="idx",
        num_classes=10,
        shape=(1, 28, 28),
        mean=(0.2860,),  # measured on the training split: 0.28604
        std=(0.3530,),  # measured: 0.35302
        files=_idx_files(
            _FASHION_URL,
            {
                "train-images-idx3-ubyte.gz": (
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                ),
                "train-labels-idx1-ubyte.gz": (
                    "25c81989df183df01b3e8a0aad5dffbe",
                    "9018921c3c673c538a1fc5bad174d6f9",
                ),
                "t10k-images-idx3-ubyte.gz": (
                    "bef4ecab320f06d8554ea6380940ec79",
                    "8181f5470baa50b63fa0f6fddb340f0a",
                ),
                "t10k-labels-idx1-ubyte.gz": (
                    "bb300cfdad3c16e7a12a480ee83cd310",
                    "15d484375f8d13e6eb1aabb0c3f46965",
                ),
            },
        ),
        splits=_IDX_NAMES,
        sizes={"train": 60000, "test": 10000},
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        format="cifar10",
        num_classes=10,
        shape=(3, 32, 32),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        files=(
            RemoteFile(
                "cifar-10-python.tar.gz",
                _KRIZ_URL + "cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a",
            ),
        ),
        splits={"train": ("cifar-10-python.tar.gz",), "test": ("cifar-10-python.tar.gz",)},
        sizes={"train": 50000, "test": 10000},
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        format="cifar100",
        num_classes=100,
        shape=(3, 32, 32),
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        files=(
            RemoteFile(
                "cifar-100-python.tar.gz",
                _KRIZ_URL + "cifar-100-python.tar.gz",
                "eb9058c3a382ffc7106e4002c42a8d85",
            ),
        ),
        splits={"train": ("cifar-100-python.tar.gz",), "test": ("cifar-100-python.tar.gz",)},
        sizes={"train": 50000, "test": 10000},
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
    "svhn": DatasetInfo(
        name="svhn",
        format="svhn",
        num_classes=10,
        shape=(3, 32, 32),
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        files=(
            RemoteFile(
                "train_32x32.mat", _SVHN_URL + "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"
            ),
            RemoteFile(
                "test_32x32.mat", _SVHN_URL + "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"
            ),
            RemoteFile(
                "extra_32x32.mat", _SVHN_URL + "extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"
            ),
        ),
        splits={
            "train": ("train_32x32.mat",),
            "test": ("test_32x32.mat",),
            "extra": ("extra_32x32.mat",),
        },
        sizes={"train": 73257, "test": 26032, "extra": 531131},
        homepage="http://ufldl.stanford.edu/housenumbers/",
    ),
    "tiny_imagenet": DatasetInfo(
        name="tiny_imagenet",
        format="tiny_imagenet",
        num_classes=200,
        shape=(3, 64, 64),
        # as given by the ECCV 2024 code for this repack (not recomputed here)
        mean=(0.4802, 0.4481, 0.3975),
        std=(0.2302, 0.2265, 0.2262),
        files=(
            RemoteFile("train.npz", _TINY_URL + "train.npz", "db414016436353892fdf00cb30b9ee57"),
            RemoteFile("val.npz", _TINY_URL + "val.npz", "7762694b6217fec8ba1a7be3c20ef218"),
        ),
        splits={"train": ("train.npz",), "test": ("val.npz",)},
        sizes={"train": 100000, "test": 10000},
        homepage="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    ),
    "imagenette": DatasetInfo(
        name="imagenette",
        format="imagenette",
        num_classes=10,
        shape=(3, 150, 150),  # the notebooks' CenterCrop(150) (robust_ebm.data.imagenette)
        # ImageNet's constants (the notebooks do not normalize; not measured on Imagenette)
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        files=(
            RemoteFile("imagenette2-160.tgz", _IMAGENETTE_URL + "imagenette2-160.tgz",
                       "e793b78cc4c9e9a4ccc0c1155377a412"),
        ),
        splits={"train": ("imagenette2-160.tgz",), "test": ("imagenette2-160.tgz",)},
        sizes={"train": 9469, "test": 3925},
        homepage="https://github.com/fastai/imagenette",
    ),
    "digits": DatasetInfo(
        name="digits",
        format="digits",
        num_classes=10,
        shape=(1, 8, 8),
        mean=(0.3053,),  # over all 1797 images after the 0..16 -> 0..255 mapping
        std=(0.3759,),
        splits={"train": (), "test": ()},
        sizes={"train": 1438, "test": 359},
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
    ),
}


# name -> DatasetInfo. Flags: ``format`` (as in the entry), ``system_package`` (a Debian
# package that installs the official files where :mod:`robust_ebm.data.locate` looks).
CATALOG: Registry[DatasetInfo] = Registry("dataset", hint="or pass the path of a .npz file")
_SYSTEM_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}
for _name, _info in _DATASETS.items():
    CATALOG.add(_name, _info, format=_info.format, system_package=_SYSTEM_PACKAGES.get(_name))


def list_datasets() -> list[str]:
    """Names of the catalog datasets, sorted."""
    return CATALOG.names()


def get_info(name: str) -> DatasetInfo:
    """The catalog entry for ``name``; raises :class:`UserError` listing the known names."""
    return CATALOG.get(name.lower().replace("-", "_"))
