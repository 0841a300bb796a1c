"""Generation from a classifier read as an EBM: SGLD with momentum and its initialisations.

>>> from robust_ebm.sampling import SGLD, ClassPCAInit, generate
>>> # init = ClassPCAInit().fit(train_images, train_labels)
>>> # gen = generate(model, init, SGLD(step_size=1.0, momentum=0.8), range(10), n_per_class=10)
"""

from .generate import Generation, generate, sample_classes, save_grid
from .init import (
    INITS,
    BufferInit,
    ChainStreams,
    ClassGaussianInit,
    ClassPCAInit,
    ClassStatistics,
    Init,
    NoiseInjectionInit,
    NormalInit,
    PCAOrGaussianInit,
    UniformInit,
    as_unit_float,
    data_fingerprint,
    load_buffer,
    make_init,
)
from .reference import (
    MahalanobisEnergy,
    ReferenceEnergy,
    ReferenceStatistics,
    make_reference_energy,
    reference_statistics,
)
from .sgld import (
    ENERGIES,
    SGLD,
    SGLD_ENERGIES,
    EnergyFn,
    SampleResult,
    frozen_eval,
    resolve_energy,
)

__all__ = [
    "ENERGIES",
    "INITS",
    "SGLD",
    "BufferInit",
    "ChainStreams",
    "SGLD_ENERGIES",
    "ClassGaussianInit",
    "ClassPCAInit",
    "ClassStatistics",
    "EnergyFn",
    "Generation",
    "Init",
    "MahalanobisEnergy",
    "NoiseInjectionInit",
    "NormalInit",
    "PCAOrGaussianInit",
    "ReferenceEnergy",
    "ReferenceStatistics",
    "SampleResult",
    "UniformInit",
    "as_unit_float",
    "data_fingerprint",
    "frozen_eval",
    "generate",
    "load_buffer",
    "make_init",
    "make_reference_energy",
    "reference_statistics",
    "resolve_energy",
    "sample_classes",
    "save_grid",
]
