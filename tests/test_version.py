"""The version has one source (robust_ebm.__version__) that the CLI, provenance and the
installed package metadata all report."""

import importlib.metadata
import tomllib
from pathlib import Path

import pytest

import robust_ebm
from robust_ebm.cli import main
from robust_ebm.provenance import versions


def test_pyproject_reads_the_version_from_the_package():
    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "robust_ebm.__version__"}


def test_cli_and_provenance_print_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"robust-ebm {robust_ebm.__version__}"
    assert versions()["robust_ebm"] == robust_ebm.__version__


def test_installed_metadata_matches_when_installed():
    try:
        installed = importlib.metadata.version("robust-ebm")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("robust-ebm is not installed (running from PYTHONPATH only)")
    assert installed == robust_ebm.__version__
