"""The energy detector: metrics vs scikit-learn, fit/save/load, adaptive attacks, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robust_ebm.analysis import analyze_energy
from robust_ebm.attacks import make_attack
from robust_ebm.detection import (
    DetectorAwareLoss,
    EnergyDetector,
    adaptive_attacks,
    auroc,
    calibrate_detector,
    evaluate_detector,
    he_attacks,
    he_gamma_study,
    roc_curve,
    search_he_gamma,
    tpr_at_fpr,
    youden_threshold,
)
from robust_ebm.energy import free_energy
from robust_ebm.errors import UserError

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_roc_match_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    neg = rng.normal(0, 1, 200 + seed)
    pos = rng.normal(0.7, 1.3, 150)
    if ties:  # heavy ties, also across the two classes
        neg, pos = np.round(neg * 2) / 2, np.round(pos * 2) / 2
    labels = np.r_[np.zeros(neg.size), np.ones(pos.size)]
    scores = np.r_[neg, pos]
    assert auroc(neg, pos) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(neg, pos)
    f2, t2, _ = sklearn_metrics.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    # Youden J from our ROC equals the best J of sklearn's
    _, t_y, f_y = youden_threshold(neg, pos)
    assert t_y - f_y == pytest.approx(np.max(t2 - f2))
    assert tpr_at_fpr(neg, pos, 0.05) == pytest.approx(t2[f2 <= 0.05].max())


def test_auroc_edge_cases():
    assert auroc([0, 0], [1, 1]) == 1.0
    assert auroc([1, 1], [0]) == 0.0
    assert auroc([3, 3], [3]) == 0.5
    with pytest.raises(UserError):
        auroc([], [1.0])


@pytest.fixture(scope="module")
def model(digits_mlp):
    return digits_mlp


@pytest.fixture(scope="module")
def calibrated(model):
    """Calibrate on the first 300 TRAIN points (held out from the test points used below)."""
    from robust_ebm.data import load_dataset

    tr = load_dataset("digits", "train")
    x, y = tr.images[:300].float() / 255, tr.labels[:300]
    det, analysis = calibrate_detector(model, x, y, make_attack("pgd", eps=0.5, steps=20))
    return det, analysis, (x, y)


def test_calibration_picks_best_temperature(calibrated):
    det, analysis, _ = calibrated
    cal = det.info["calibration"]
    assert det.direction == "below"
    assert cal["auroc"] == max(r["auroc_below"] for r in cal["grid"])
    assert det.temperature in [r["temperature"] for r in cal["grid"]]
    assert cal["auroc"] > 0.8  # at eps 0.5, x* energies fall below clean on this model
    # the stored (tpr, fpr) are those of predict() at the stored tau
    adv = analysis.adversarial["calibration"]
    assert cal["fpr"] == pytest.approx(float(det.predict(analysis.clean).double().mean()))
    assert cal["tpr"] == pytest.approx(float(det.predict(adv).double().mean()))


def test_predict_is_energy_below_tau(calibrated):
    det, analysis, _ = calibrated
    e = free_energy(analysis.clean, det.temperature)
    assert torch.equal(det.predict(analysis.clean), e <= det.threshold)
    assert torch.equal(det.score(analysis.clean), -e)


def test_saved_detector_reloads_to_identical_decisions(calibrated, tmp_path, model):
    det, analysis, (x, _) = calibrated
    path = det.save(tmp_path / "det.json")
    assert path.stat().st_size < 20_000
    again = EnergyDetector.load(path)
    assert (again.temperature, again.threshold, again.direction) == (
        det.temperature, det.threshold, det.direction)
    for logits in (analysis.clean, analysis.adversarial["calibration"]):
        assert torch.equal(again.predict(logits), det.predict(logits))
    assert torch.equal(again.predict_inputs(model, x), det.predict_inputs(model, x))
    assert not list(tmp_path.glob(".*.tmp"))


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        EnergyDetector.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError):
        EnergyDetector.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "x"}')
    with pytest.raises(UserError):
        EnergyDetector.load(tmp_path / "other.json")
    with pytest.raises(UserError, match="not fitted"):
        EnergyDetector().predict(torch.zeros(2, 3))


def test_direction_auto_and_above():
    torch.manual_seed(0)
    clean = torch.randn(200, 5) + 3.0  # low energy
    adv = torch.randn(200, 5)  # higher energy than clean
    det = EnergyDetector().fit(clean, adv, direction="auto")
    assert det.direction == "above" and det.info["calibration"]["auroc"] > 0.9
    assert torch.equal(det.predict(adv), det.energy(adv) >= det.threshold)
    below = EnergyDetector().fit(clean, adv)
    assert below.direction == "below" and below.info["calibration"]["auroc"] < 0.1


def test_evaluate_adaptive_and_he_study(calibrated, model, digits_test):
    det, _, (xc, yc) = calibrated
    x, y = digits_test(120)
    hp = {"eps": 0.5, "steps": 10}
    gamma, trace = search_he_gamma(model, xc[:100], yc[:100], det, hp, iters=3)
    assert trace[0]["gamma"] == 0.0 and trace[0]["gap"] < 0  # PGD lands below clean energy
    assert gamma > 0
    closest = min(abs(r["gap"]) for r in trace)
    assert closest < abs(trace[0]["gap"]) / 2
    attacks = {"pgd": make_attack("pgd", **hp)} | adaptive_attacks(det, hp, gamma, lam=1.0)
    attacks |= he_attacks((0.0, 1.5), hp)
    analysis = analyze_energy(model, x, y, attacks)
    rows = evaluate_detector(det, analysis)
    assert rows["pgd"]["auroc"] > 0.75
    # the detector is evaded: adaptive attacks and HE-PGD are flagged far less than PGD
    for name in ("he_adaptive", "pgd_detector_aware", "he_pgd[gamma=1.5]"):
        assert rows[name]["tpr"] < rows["pgd"]["tpr"] - 0.3, name
        assert rows[name]["accuracy_adv"] <= 0.1, name
    study = he_gamma_study(analysis, det, (0.0, 1.5))
    assert study[0]["tpr"] == pytest.approx(rows["he_pgd[gamma=0]"]["tpr"])
    assert study[1]["E_rel_mean"] > study[0]["E_rel_mean"]
    # gamma = 0 is plain PGD: same logits
    assert torch.allclose(analysis.adversarial["he_pgd[gamma=0]"], analysis.adversarial["pgd"],
                          atol=1e-4)


def test_detector_aware_loss():
    logits = torch.tensor([[5.0, 0.0], [0.0, 0.1]], requires_grad=True)
    y = torch.tensor([0, 0])
    loss = DetectorAwareLoss(temperature=1.0, threshold=-2.0, lam=2.0)
    v = loss(logits, y)
    assert v.shape == (2,)
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    e = free_energy(logits)
    assert torch.allclose(v, ce - 2.0 * torch.relu(-2.0 - e))
    make_attack("pgd", loss=loss, eps=0.1, steps=2)  # accepted by the engine


# ---------------------------------------------------------------- CLI (in-process)


def _main(argv):
    from robust_ebm.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    from robust_ebm.checkpoint import save_model

    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_model(path, model, dataset="digits")
    return path


def test_cli_energy_json(checkpoint, tmp_path, capsys):
    out = tmp_path / "energy"
    code = _main(["energy", "--checkpoint", checkpoint, "--dataset", "digits", "--n", 60,
                  "--eps", 0.2, "--attacks", "fgsm,pgd,he_pgd,noise", "--steps", 5,
                  "--sweep-steps", "1,5", "--sweep-eps", "0.5,2", "--out", out, "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(stdout)
    assert set(res["attacks"]) == {"fgsm", "pgd", "he_pgd", "noise"}
    assert res["n"] == 60 and len(res["sweep"]["eps"]) == 2
    for f in ("energy.json", "energy.md", "energy_hist.png", "pgd_sweep.png", "pgd_sweep.json",
              "run.json"):
        assert (out / f).is_file(), f
    code = _main(["energy", "--checkpoint", checkpoint, "--dataset", "digits", "--n", 20,
                  "--eps", 0.1, "--attacks", "pgd", "--steps", 2, "--no-sweep",
                  "--out", tmp_path / "e2"])
    stdout, _ = capsys.readouterr()
    assert code == 0 and "| pgd |" in stdout and not (tmp_path / "e2" / "pgd_sweep.png").exists()


def test_cli_detect_calibrate_and_evaluate(checkpoint, tmp_path, capsys):
    cal = tmp_path / "cal"
    code = _main(["detect", "calibrate", "--checkpoint", checkpoint, "--dataset", "digits",
                  "--cal-split", "train", "--n", 150, "--eps", 0.5, "--steps", 10,
                  "--out", cal, "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(stdout)
    assert res["info"]["calibration"]["auroc"] > 0.7
    det_path = cal / "detector.json"
    assert det_path.is_file() and (cal / "roc_calibration.png").is_file()
    ev = tmp_path / "ev"
    code = _main(["detect", "evaluate", "--checkpoint", checkpoint, "--dataset", "digits",
                  "--detector", det_path, "--n", 60, "--attacks", "fgsm,pgd", "--steps", 5,
                  "--he-gammas", "0,1.5", "--search-n", 40, "--out", ev, "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(stdout)
    assert set(res["attacks"]) >= {"fgsm", "pgd", "pgd_detector_aware", "he_adaptive",
                                   "he_pgd[gamma=0]", "he_pgd[gamma=1.5]"}
    assert [r["gamma"] for r in res["he_study"]] == [0.0, 1.5]
    assert res["he_adaptive_gamma"] is not None
    for f in ("detection.json", "detection.md", "roc.png", "he_study.png", "he_study.json"):
        assert (ev / f).is_file(), f
    # evaluating on the calibration split is refused
    code = _main(["detect", "evaluate", "--checkpoint", checkpoint, "--dataset", "digits",
                  "--detector", det_path, "--split", "train", "--out", tmp_path / "x"])
    _, err = capsys.readouterr()
    assert code == 2 and "calibration points" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv,needle", [
    (["energy", "--dataset", "digits", "--eps", "0.1", "--attacks", "nope"], "unknown attack"),
    (["energy", "--dataset", "digits", "--eps", "-1"], "--eps"),
    (["energy", "--dataset", "digits", "--eps", "0.1", "--attacks", " , "], "--attacks"),
    (["energy", "--dataset", "digits", "--eps", "0.1", "--sweep-eps", "a,b"], "--sweep-eps"),
    (["detect", "calibrate", "--dataset", "digits", "--eps", "0.1", "--temperatures", "0,1"],
     "--temperatures"),
    (["detect", "calibrate", "--dataset", "digits", "--eps", "0.1"], "--val-size"),
    (["detect", "evaluate", "--dataset", "digits", "--detector", "/nonexistent/d.json"],
     "not found"),
    (["detect", "frob"], "invalid choice"),
])
def test_cli_bad_input_one_line_exit_2(argv, needle, checkpoint, tmp_path, capsys):
    argv = argv[:1] + (argv[1:2] if argv[0] == "detect" else []) + [
        "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")] + (
        argv[2:] if argv[0] == "detect" else argv[1:])
    if argv[1] == "frob":
        argv = ["detect", "frob"]
    code = _main(argv)
    _, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


def test_cli_detect_published_protocol_flags(checkpoint, tmp_path, capsys):
    """--positives all, --temperatures published and --step-size reach the library: every x*
    is a positive in calibration and evaluation, the grid is the notebooks' (docs/fidelity.md)."""
    from robust_ebm.detection.detector import PUBLISHED_TEMPERATURES

    cal = tmp_path / "cal"
    code = _main(["detect", "calibrate", "--checkpoint", checkpoint, "--dataset", "digits",
                  "--cal-split", "train", "--n", 100, "--eps", 0.5, "--steps", 5,
                  "--step-size", 0.05, "--temperatures", "published", "--positives", "all",
                  "--out", cal, "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    info = json.loads(stdout)["info"]
    assert info["calibration"]["positives"] == "all" and info["step_size"] == 0.05
    assert [r["temperature"] for r in info["calibration"]["grid"]] == list(PUBLISHED_TEMPERATURES)
    n_adv = {}
    for positives in ("all", "successful"):
        code = _main(["detect", "evaluate", "--checkpoint", checkpoint, "--dataset", "digits",
                      "--detector", cal / "detector.json", "--n", 40, "--attacks", "pgd",
                      "--eps", 0.05, "--steps", 5, "--he-gammas", "0", "--no-adaptive",
                      "--positives", positives, "--out", tmp_path / positives, "--json"])
        stdout, err = capsys.readouterr()
        assert code == 0, err
        res = json.loads(stdout)
        n_adv[positives] = res["attacks"]["pgd"]["n_adv"]
        wrong = 1 - res["attacks"]["pgd"]["accuracy_adv"]
        # the gamma study counts the same positives as the attack rows
        (study,) = res["he_study"]
        he_row = res["attacks"]["he_pgd[gamma=0]"]
        assert study["n_adv"] == he_row["n_adv"] and study["tpr"] == he_row["tpr"], positives
        n_adv[positives + " he"] = study["n_adv"]
    assert n_adv["all"] == n_adv["all he"] == 40
    assert n_adv["successful"] == round(wrong * 40) < 40
    assert n_adv["successful he"] < 40
    md = (tmp_path / "all" / "detection.md").read_text()
    assert "Positives are every x*" in md and "successful x* only" not in md


def test_he_gamma_study_follows_positives():
    """The HE-PGD study's TPR uses the positives asked for, as evaluate_detector: over the x*
    that fool the model, or over every x* (the published definition)."""
    from robust_ebm.analysis.energy_analysis import EnergyAnalysis

    y = torch.zeros(4, dtype=torch.long)
    clean = torch.tensor([[5.0, 0.0]] * 4)
    # x* 0 and 1 fool the model with low energy (flagged), 2 and 3 do not and are unflagged
    adv = torch.tensor([[0.0, 9.0], [0.0, 8.0], [1.0, 0.0], [1.0, 0.5]])
    analysis = EnergyAnalysis(y, clean, {"he_pgd[gamma=1]": adv})
    det = EnergyDetector(temperature=1.0, threshold=-6.0, direction="below")
    for only_successful, tpr, n in ((True, 1.0, 2), (False, 0.5, 4)):
        (row,) = he_gamma_study(analysis, det, (1.0,), only_successful=only_successful)
        ref = evaluate_detector(det, analysis, only_successful)["he_pgd[gamma=1]"]
        assert (row["tpr"], row["n_adv"]) == (ref["tpr"], ref["n_adv"]) == (tpr, n)


def test_cli_energy_step_size_reaches_the_pgd_family(checkpoint, tmp_path, capsys):
    """--step-size sets the step of PGD and HE-PGD: a vanishing step leaves PGD at its random
    start (accuracy near clean), the default step drives it down."""
    from robust_ebm.analysis import default_attacks

    attacks, _ = default_attacks(0.2, ["pgd", "cw", "trades_kl", "he_pgd", "fgsm"], step_size=0.01)
    assert all(float(attacks[n].step_size) == 0.01 for n in ("pgd", "cw", "trades_kl", "he_pgd"))
    acc = {}
    for name, extra in [("default", []), ("tiny", ["--step-size", 1e-9])]:
        code = _main(["energy", "--checkpoint", checkpoint, "--dataset", "digits", "--n", 60,
                      "--eps", 0.2, "--attacks", "pgd", "--steps", 5, "--no-sweep", *extra,
                      "--out", tmp_path / name, "--json"])
        stdout, err = capsys.readouterr()
        assert code == 0, err
        res = json.loads(stdout)
        acc[name] = (res["attacks"]["pgd"]["accuracy_adv"], res["attacks"]["pgd"]["accuracy"])
    assert acc["tiny"][0] > acc["default"][0] + 0.2
    assert acc["tiny"][0] >= acc["tiny"][1] - 0.1
