"""Every ``docs/<page>.md#anchor`` the code, tests, configs and docs cite names a real heading,
and nothing cites a file outside the repository."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
CITED = re.compile(r"(?:docs/|\.\./|\]\()([a-z_]+)\.md#([a-z0-9-]+)")
SOURCES = [
    *sorted((ROOT / "src").rglob("*.py")), *sorted((ROOT / "tests").rglob("*.py")),
    *sorted((ROOT / "configs").rglob("*.toml")), *sorted((ROOT / "docs").rglob("*.md")),
]


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", page.read_text(), re.M)}


def _citations() -> list[tuple[str, str, str]]:
    found = []
    for f in SOURCES:
        for page, anchor in CITED.findall(f.read_text(encoding="utf-8")):
            found.append((str(f.relative_to(ROOT)), page, anchor))
    return found


def test_slug_rule():
    assert _slug("HE-PGD") == "he-pgd"
    assert _slug("TRADES as energies") == "trades-as-energies"


def test_science_page_is_cited_from_the_code():
    assert any(src.startswith("src/") and page == "science" for src, page, _ in _citations())


@pytest.mark.parametrize("src,page,anchor", _citations())
def test_cited_anchor_exists(src, page, anchor):
    target = ROOT / "docs" / f"{page}.md"
    assert target.is_file(), f"{src} cites docs/{page}.md, which does not exist"
    assert anchor in _anchors(target), f"{src} cites docs/{page}.md#{anchor}: no such heading"


def test_no_citation_of_files_outside_the_repository():
    bad = [str(f.relative_to(ROOT)) for f in SOURCES if f != Path(__file__)
           and re.search(r"SPEC(\.md| §)|\.\./shared", f.read_text(encoding="utf-8"))]
    assert not bad, f"these files cite notes outside the repository: {bad}"


def test_architecture_snippets_run(tmp_path):
    """The 'Adding things' snippets of docs/architecture.md run as written, in a fresh process
    (their registrations must not leak into the registries other tests enumerate)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 4, "expected snippets for an attack, an objective, a model, an init"
    checks = """
import torch
x = torch.rand(6, 1, 8, 8); y = torch.arange(6) % 10
x_adv = attack(model, x, y)
assert ((x_adv - x).abs().max() <= 0.1 + 1e-6) and x_adv.min() >= 0 and x_adv.max() <= 1
loss, logs = objective(model, x, y)
assert loss.dim() == 0 and torch.isfinite(loss)
assert gen.x.shape == (4, 1, 8, 8) and gen.y.tolist() == [0, 0, 1, 1]
print("ok")
"""
    script = tmp_path / "snippets.py"
    script.write_text("\n".join(blocks) + checks)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
