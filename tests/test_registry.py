"""The shared name registry: lookups, registration flags, and every named thing using it."""

from __future__ import annotations

import pytest

from robust_ebm.errors import UserError
from robust_ebm.registry import Registry


def test_register_get_flags_and_unknown_names():
    r: Registry[int] = Registry("widget", hint="or pass a number")
    r.register("b", heavy=True)(2)
    r.add("a", 1, heavy=False, colour="red")
    r.add("c", 3)
    assert r.get("a") == 1 and r["b"] == 2 and "c" in r and "d" not in r
    assert r.names() == ["a", "b", "c"]
    assert r.names(heavy=True) == ["b"]
    assert r.names(heavy=None) == ["c"]  # a missing flag reads as None
    assert r.names(where=lambda m: "colour" in m) == ["a"]
    assert dict(r.meta("a")) == {"heavy": False, "colour": "red"}
    assert list(r) == ["b", "a", "c"] and len(r) == 3  # registration order
    with pytest.raises(UserError, match=r"unknown widget 'd'; choose one of: a, b, c or pass"):
        r.get("d")
    assert r.get("d", None) is None  # dict.get semantics when a default is given
    with pytest.raises(ValueError, match="registered twice"):
        r.add("a", 5)
    with pytest.raises(TypeError):
        r.meta("a")["heavy"] = True  # type: ignore[index]


def test_every_named_thing_is_a_registry():
    from robust_ebm.attacks.registry import ATTACKS, REFERENCE_ATTACKS
    from robust_ebm.data.catalog import CATALOG
    from robust_ebm.data.readers import FORMATS
    from robust_ebm.losses import LOSSES
    from robust_ebm.models.registry import MODELS
    from robust_ebm.objectives.registry import OBJECTIVES
    from robust_ebm.sampling.init import INITS
    from robust_ebm.sampling.sgld import SGLD_ENERGIES

    for reg in (ATTACKS, CATALOG, FORMATS, LOSSES, MODELS, OBJECTIVES, INITS, SGLD_ENERGIES):
        assert isinstance(reg, Registry) and len(reg) > 0
    # flags replace the old ``ta_*`` prefix convention, without changing the set
    expected = {"autoattack", "torchattacks"} | {n for n in ATTACKS if n.startswith("ta_")}
    assert REFERENCE_ATTACKS == expected
    assert all(ATTACKS.meta(n)["requires"] for n in REFERENCE_ATTACKS)
    assert LOSSES.names(needs_natural_logits=True) == ["trades_kl"]
    assert SGLD_ENERGIES.names(needs_labels=False) == ["free"]
    assert all(INITS[n].name == n for n in INITS)
    assert sorted(INITS.meta(n)["alias"] for n in INITS) == [
        "buffer", "gaussian", "noise", "normal", "pca", "pca_gaussian", "uniform"]
    assert {CATALOG[n].format for n in CATALOG} <= set(FORMATS)


def test_objectives_do_not_import_the_training_package():
    import ast
    from pathlib import Path

    import robust_ebm.objectives as objectives

    for path in Path(objectives.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("train"), (path.name, node.module)
                assert "train" not in (node.module or "").split("."), (path.name, node.module)
