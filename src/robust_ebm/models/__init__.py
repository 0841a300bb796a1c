"""Models: a registry of classifiers that take [0, 1] images and return logits.

>>> from robust_ebm.models import create_model
>>> model = create_model("small_cnn", num_classes=10, in_channels=1)
"""

from . import dm_resnet, mlp, preact_resnet, resnet, small_cnn, wide_resnet  # noqa: F401
from .foreign import ForeignState, infer_architecture, load_foreign_state_dict, read_foreign_state
from .layers import Classifier, Normalize
from .modes import frozen_eval
from .registry import create_model, list_models, register_model
from .zoo import ZooEntry, list_zoo, zoo_entry

__all__ = [
    "Classifier",
    "Normalize",
    "create_model",
    "frozen_eval",
    "list_models",
    "register_model",
    "load_foreign_state_dict",
    "read_foreign_state",
    "infer_architecture",
    "ForeignState",
    "ZooEntry",
    "list_zoo",
    "zoo_entry",
]
