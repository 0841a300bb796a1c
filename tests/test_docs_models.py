"""The model-loading examples of README.md, docs/analysis.md and docs/models.md run as
written (on random-weight files of the layouts they name), and the zoo counts stated in
docs/models.md are the catalog's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from robust_ebm.checkpoint import save_model
from robust_ebm.models import Classifier, create_model, list_zoo, zoo_entry

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "analysis.md", ROOT / "docs" / "models.md"]


def _blocks():
    for doc in DOCS:
        for block in re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S):
            if "load_model(" in block:
                yield pytest.param(block, id=f"{doc.name}:{block.splitlines()[1][:40]}")


def _zoo_file(path: Path, name: str) -> None:
    e = zoo_entry(name)
    sd = create_model(e.arch, 10, 3, **e.kwargs).net.state_dict()
    if e.layout == "state_dict/module.":
        sd = {"state_dict": {"module." + k: v for k, v in sd.items()}}
    torch.save(sd, path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    (d / "runs" / "std").mkdir(parents=True)
    save_model(d / "runs" / "std" / "model.safetensors", create_model("small_cnn", 10, 1),
               dataset="fashion_mnist")
    for name in ("Gowal2020Uncovering_28_10_extra", "Carmon2019Unlabeled"):
        _zoo_file(d / f"{name}.pt", name)
    r18 = create_model("resnet18", 10, 3).net.state_dict()
    torch.save(r18, d / "resnet18.pt")
    torch.save({"module." + k: v for k, v in r18.items()}, d / "resnet18_cifar10.pt")
    return d


@pytest.mark.parametrize("block", list(_blocks()))
def test_doc_example_runs(block, files, monkeypatch):
    monkeypatch.chdir(files)
    scope: dict = {}
    exec(compile(block, "<doc example>", "exec"), scope)  # noqa: S102 - our own docs
    model = scope["model"]
    assert isinstance(model, Classifier)
    c = model.arch["in_channels"]
    with torch.no_grad():
        out = model(torch.rand(2, c, 32 if c == 3 else 28, 32 if c == 3 else 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_zoo_counts_in_docs_match_the_catalog():
    text = " ".join((ROOT / "docs" / "models.md").read_text().split())

    def native(d, t=None):
        es = list_zoo(d, t)
        return sum(e.native for e in es), len(es)

    n, total = native("cifar10")
    assert f"{n} of the {total} CIFAR-10 entries" in text
    for t in ("Linf", "L2"):
        assert "{} {} of {}".format(t, *native("cifar10", t)) in text
    assert "{} of the {} CIFAR-100 Linf entries".format(*native("cifar100", "Linf")) in text
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"{n} of the {total} Linf/L2 entries natively" in readme
