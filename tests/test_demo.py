"""``robust-ebm demo``: the stage cache, the report, and the whole demo on --quick sizes.

The end-to-end tests need the real Fashion-MNIST (Debian's dataset-fashion-mnist, as CI
installs it) and the committed models in artifacts/fmnist.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robust_ebm.cli.main import main
from robust_ebm.demo import QUICK, DemoConfig, build_stages, find_root
from robust_ebm.demo.report import SECTIONS
from robust_ebm.demo.runner import Stage, fingerprint, run_stages
from robust_ebm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _fmnist_available() -> bool:
    from robust_ebm.data import load_dataset

    try:
        load_dataset("fashion_mnist", "test")
    except (UserError, OSError):
        return False
    return True


needs_fmnist = pytest.mark.skipif(not _fmnist_available(),
                                  reason="apt-get install dataset-fashion-mnist")


# -- the stage runner ---------------------------------------------------------------------------


def _counting_stage(name: str, calls: list[str], params: dict, files=(), fail=False) -> Stage:
    def run(ctx):
        calls.append(name)
        (ctx.dir / "fig.txt").write_text(f"{name} {params}")
        if fail:
            raise KeyboardInterrupt
        return {"value": params.get("x", 0) * 2}

    return Stage(name, name, 1, params, tuple(files), run)


def test_runner_reuses_then_recomputes_a_stage_whose_inputs_changed(tmp_path):
    calls: list[str] = []
    ckpt = tmp_path / "model.bin"
    ckpt.write_bytes(b"weights v1")
    stages = [_counting_stage("a", calls, {"x": 1}), _counting_stage("b", calls, {"x": 2}, [ckpt])]
    first = run_stages(stages, tmp_path / "out", log=lambda s: None)
    assert calls == ["a", "b"] and [r.reused for r in first] == [False, False]
    assert first[1].result == {"value": 4}
    again = run_stages(stages, tmp_path / "out", log=lambda s: None)
    assert calls == ["a", "b"] and [r.reused for r in again] == [True, True]
    assert again[1].result == first[1].result
    # another parameter (e.g. a seed) recomputes that stage only
    stages[0] = _counting_stage("a", calls, {"x": 5})
    # another checkpoint (same name, new bytes) recomputes the stage that reads it
    ckpt.write_bytes(b"weights v2")
    third = run_stages(stages, tmp_path / "out", log=lambda s: None)
    assert calls == ["a", "b", "a", "b"] and [r.reused for r in third] == [False, False]
    assert third[0].result == {"value": 10}


def test_runner_never_reuses_an_interrupted_stage(tmp_path):
    calls: list[str] = []
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_stages([_counting_stage("a", calls, {"x": 1}, fail=True)], out, log=lambda s: None)
    assert not (out / "stages" / "a").exists()  # only the .partial folder, never reused
    rec = run_stages([_counting_stage("a", calls, {"x": 1})], out, log=lambda s: None)
    assert calls == ["a", "a"] and not rec[0].reused and rec[0].result == {"value": 2}
    assert not (out / "stages" / ".a.partial").exists()


def test_fingerprint_keys_params_version_and_file_bytes(tmp_path):
    f = tmp_path / "c.safetensors"
    f.write_bytes(b"1")
    base = fingerprint("s", 1, {"seed": 0}, [f])
    assert fingerprint("s", 1, {"seed": 0}, [f]) == base
    assert fingerprint("s", 1, {"seed": 1}, [f]) != base
    assert fingerprint("s", 2, {"seed": 0}, [f]) != base
    f.write_bytes(b"2")
    assert fingerprint("s", 1, {"seed": 0}, [f]) != base


def test_every_stage_fingerprint_holds_the_seed_and_the_checkpoints(tmp_path):
    cfg = DemoConfig(root=find_root(ROOT), sizes=QUICK)
    a = {s.name: fingerprint(s.name, s.version, s.params, s.files) for s in build_stages(cfg)}
    seed1 = DemoConfig(root=cfg.root, sizes=QUICK, seed=1)
    b = {s.name: fingerprint(s.name, s.version, s.params, s.files) for s in build_stages(seed1)}
    assert set(a) == {"training", "energy", "detection", "generation", "robustness"}
    assert all(a[k] != b[k] for k in a)
    # another checkpoint for the standard model changes the stages that read it, not the others
    other = tmp_path / "standard-s0.safetensors"
    shutil.copy(cfg.checkpoint("pgd_at"), other)
    swapped = DemoConfig(root=cfg.root, sizes=QUICK, models={"standard": other})
    c = {s.name: fingerprint(s.name, s.version, s.params, s.files)
         for s in build_stages(swapped)}
    assert c["training"] == a["training"]
    assert all(c[k] != a[k] for k in ("energy", "detection", "generation", "robustness"))


def test_find_root_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="artifacts/fmnist"):
        find_root(tmp_path)


# -- the whole demo on --quick sizes ------------------------------------------------------------


def _strip_times(obj):
    """Results without wall times (which differ between runs)."""
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items() if k not in ("seconds",)}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def _results(out: Path) -> dict:
    return {p.parent.name: _strip_times(json.loads(p.read_text())["result"])
            for p in sorted((out / "stages").glob("*/stage.json"))}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    t0 = time.perf_counter()
    assert main(["demo", "--quick", "--out", str(out), "--root", str(ROOT)]) == 0
    return out, time.perf_counter() - t0


def _decode_png(data: bytes):
    import matplotlib.image as mpimg

    img = mpimg.imread(io.BytesIO(data), format="png")
    assert img.ndim == 3 and img.shape[0] > 20 and img.shape[1] > 20
    return img


@needs_fmnist
def test_quick_demo_writes_both_reports_with_every_section_and_image(quick_run):
    out, _ = quick_run
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for anchor, title in SECTIONS.items():
        assert f'id="{anchor}"' in html and title in html
        assert f'<a id="{anchor}"></a>' in md and f"## {title}" in md
    srcs = re.findall(r'<img src="([^"]+)"', html)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(srcs) == len(links) >= 9  # the same figures in both
    for src in srcs:  # self-contained: every image inline, and a real PNG
        assert src.startswith("data:image/png;base64,")
        _decode_png(base64.b64decode(src.split(",", 1)[1]))
    for link in links:
        path = out / link
        assert path.is_file(), link
        _decode_png(path.read_bytes())
    assert "http://" not in html and "https://" not in html  # nothing fetched from outside
    # summary numbers come first, provenance last
    assert html.index('id="summary"') < html.index('id="training"')
    assert html.index('id="robustness"') < html.index('id="provenance"')


@needs_fmnist
def test_quick_demo_numbers_are_real(quick_run):
    out, _ = quick_run
    res = _results(out)
    energy = res["energy"]["models"]
    for m in ("standard", "pgd_at", "weat_adv"):
        assert set(energy[m]["attacks"]) >= {"fgsm", "pgd", "he_pgd", "noise"}
        assert 0 <= energy[m]["clean"]["accuracy"] <= 1
    rob = res["robustness"]
    assert set(rob["committed"]) == set(rob["fresh"]) == {
        "standard", "pgd_at", "trades", "mart", "weat_adv", "weat_nat"}
    # the committed models: PGD leaves the robust ones far more accuracy than the standard one
    assert rob["fresh"]["pgd_at"]["pgd"] > rob["fresh"]["standard"]["pgd"]
    det = res["detection"]
    assert {"pgd", "fgsm", "apgd_ce", "pgd_detector_aware"} <= set(det["rows"])
    assert len(det["he_study"]) == len(QUICK.det_gammas)
    gen = res["generation"]["models"]
    assert all(v["fid"] > 0 and v["is_mean"] >= 1 for v in gen.values())
    tr = res["training"]["curves"]
    assert len(tr["pgd_at"]) == len(tr["weat_adv"]) == QUICK.train_evals


@needs_fmnist
def test_second_run_reuses_every_stage(quick_run, capsys):
    out, _ = quick_run
    before = _results(out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "stages").glob("*/stage.json")}
    assert main(["demo", "--quick", "--out", str(out), "--root", str(ROOT), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["stages"]) == 5 and all(s["reused"] for s in info["stages"].values())
    assert _results(out) == before  # (its time: benchmarks/demo.py, benchmarks/RESULTS.md)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no stage was rewritten


def _start(out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # a shell that started us in the background may have set SIGINT to 'ignore', which the child
    # would inherit (and Python then installs no KeyboardInterrupt handler): restore the default
    return subprocess.Popen(
        [sys.executable, "-m", "robust_ebm", "demo", "--quick", "--out", str(out), "--root",
         str(ROOT), *extra], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(proc: subprocess.Popen, needle: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    for line in proc.stderr:
        if needle in line:
            return
        assert time.monotonic() < deadline, f"no {needle!r} within {timeout}s"
    raise AssertionError(f"the demo ended before {needle!r} (rc {proc.wait()})")


@pytest.mark.slow  # three more partial runs of the --quick demo
@needs_fmnist
def test_interrupted_demo_resumes_with_the_same_numbers(quick_run, tmp_path):
    out0, _ = quick_run
    expected = _results(out0)
    out = tmp_path / "out"
    shutil.copytree(out0, out)
    for stage in ("detection", "generation", "robustness"):  # as if the run had stopped at 3/5
        shutil.rmtree(out / "stages" / stage)
    proc = _start(out)
    _wait_for(proc, "[3/5]")  # stage 3 is running
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    proc = _start(out)
    _wait_for(proc, "[4/5]")  # stage 3 finished again, stage 4 is running
    time.sleep(1.0)
    proc.kill()  # SIGKILL: no clean-up at all
    proc.wait(timeout=60)
    assert (out / "stages" / "detection" / "stage.json").is_file()
    assert not (out / "stages" / "generation").exists()
    assert main(["demo", "--quick", "--out", str(out), "--root", str(ROOT)]) == 0
    assert _results(out) == expected
    assert not list((out / "stages").glob(".*.partial"))


@needs_fmnist
def test_another_seed_recomputes(quick_run, tmp_path, capsys):
    out0, _ = quick_run
    out = tmp_path / "out"
    shutil.copytree(out0, out)
    # keep the run short: only the cheapest stage is left to compare
    for stage in ("training", "energy", "detection", "generation"):
        shutil.rmtree(out / "stages" / stage)
    stages = [s for s in build_stages(DemoConfig(root=ROOT, sizes=QUICK, seed=1))
              if s.name == "robustness"]
    rec = run_stages(stages, out, log=lambda s: None)[0]
    assert not rec.reused  # seed 1 does not reuse seed 0's stage
    seed0 = json.loads((out0 / "stages" / "robustness" / "stage.json").read_text())["result"]
    assert rec.result["committed"] == seed0["committed"]
    # another PGD random start: other energies (wall times left out of the comparison)
    assert _strip_times(rec.result["fresh"]) != _strip_times(seed0["fresh"])


@pytest.mark.parametrize("objective", ["standard", "pgd_at", "trades", "mart", "weat_adv",
                                       "weat_nat"])
def test_retrain_rebuilds_each_committed_model_from_its_recorded_config(objective):
    from dataclasses import asdict

    from robust_ebm.checkpoint import read_metadata
    from robust_ebm.demo.retrain import retrain_config
    from robust_ebm.train.config import eval_config, train_config

    meta = read_metadata(ROOT / "artifacts" / "fmnist" / f"{objective}-s0.safetensors")
    cfg = retrain_config(ROOT, objective, seed=0, quick=False)
    if cfg["train"].get("eval_eps") is None and objective != "standard":
        cfg["train"]["eval_eps"] = cfg["objective"]["eps"]  # as the training run resolves it
    # the [train] section: the loop's settings and what the callbacks watch
    resolved = json.loads(json.dumps(asdict(train_config(cfg)) | asdict(eval_config(cfg))))
    assert {k: resolved[k] for k in meta["config"]} == meta["config"]
    assert {k: v for k, v in cfg["objective"].items() if v is not None} == \
        {k: v for k, v in meta["objective_config"].items() if v is not None}
    assert cfg["data"]["train_subset"] == 10000 and cfg["data"]["val_size"] == 5000


@pytest.mark.slow  # six short trainings, then the --quick demo on the new models
@needs_fmnist
def test_retrain_quick_trains_six_models_and_the_stages_read_them(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["demo", "--quick", "--retrain", "--out", str(out), "--root", str(ROOT)]) == 0
    err = capsys.readouterr().err
    assert err.index("--retrain: rebuilding") < err.index("[1/5]")  # said before it started
    models = sorted(p.parent.name for p in (out / "models").glob("*/model.safetensors"))
    assert models == sorted(f"{o}-s0" for o in ("standard", "pgd_at", "trades", "mart",
                                                 "weat_adv", "weat_nat"))
    rec = json.loads((out / "stages" / "robustness" / "stage.json").read_text())
    assert all(Path(p).parent.parent == out / "models" for p in rec["params"]["checkpoints"].values())


def test_fingerprint_tells_apart_files_of_the_same_name(tmp_path):
    a, b = tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors"
    for f, data in ((a, b"1"), (b, b"2")):
        f.parent.mkdir()
        f.write_bytes(data)
    base = fingerprint("s", 1, {}, [a, b])
    b.write_bytes(b"3")  # e.g. one of six retrained models, all named model.safetensors
    assert fingerprint("s", 1, {}, [a, b]) != base


def _parsers(parser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(getattr(action, "choices", None), dict):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_help_opens_with_a_sentence_and_ends_with_an_example_that_parses():
    import shlex

    from robust_ebm.cli.main import build_parser

    parser = build_parser()
    seen = 0
    for path, p in _parsers(parser):
        assert p.description and p.description.rstrip().endswith("."), path
        text = p.format_help()
        assert text.split("\n\n")[1].strip().startswith(p.description.split()[0]), path
        lines = [ln.split("#")[0].strip() for ln in (p.epilog or "").replace("\\\n", " ")
                 .splitlines()]
        examples = [ln for ln in lines if ln.startswith("robust-ebm ") and "COMMAND" not in ln]
        assert examples, f"no example in the help of {' '.join(path) or 'robust-ebm'}"
        assert text.rstrip().endswith(p.epilog.rstrip()), path  # the example comes last
        for ex in examples:
            parser.parse_args(shlex.split(ex)[1:])  # raises on an unknown flag
        seen += 1
    assert seen >= 14
