"""Tests for smoothjax.analysis: hand-computed oracles, datetime.timedelta, and the published
Cohen et al. (2019) logs and result tables in /work/shared/reference/cohen2019."""

from __future__ import annotations

import csv
import datetime
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smoothjax import analysis

SHARED = Path(__file__).resolve().parents[2] / "shared"
COHEN = SHARED / "reference" / "cohen2019"

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
# Five rows; correct radii are 0.5, 1.0, 0.25; one abstention; one wrong prediction with radius 0.8.
CERT_ROWS = [
    "0\t3\t3\t0.5\t1\t1.5",
    "1\t2\t2\t1.0\t1\t0:00:02.5",
    "2\t1\t-1\t0.0\t0\t0:01:00",
    "3\t4\t5\t0.8\t0\t10",
    "4\t0\t0\t0.25\t1\t1 day, 0:00:00",
]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def cert_log(tmp_path, rows=CERT_ROWS, name="cert.tsv", header=HEADER):
    return analysis.read_log(write(tmp_path, name, header + "\n".join(rows) + "\n"))


def synthetic_log(tmp_path, name, n_rows, n_certified, radius=1.0):
    """n_rows rows of which the first n_certified are correct with the given radius (rest abstain)."""
    rows = [f"{i}\t1\t1\t{radius}\t1\t1.0" if i < n_certified else f"{i}\t1\t-1\t0.0\t0\t1.0"
            for i in range(n_rows)]
    return cert_log(tmp_path, rows, name)


# ---------------------------------------------------------------- reading and time parsing

def test_read_log_fields(tmp_path):
    log = cert_log(tmp_path)
    assert log.is_certification and len(log) == 5
    np.testing.assert_array_equal(log.idx, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(log.label, [3, 2, 1, 4, 0])
    np.testing.assert_array_equal(log.predict, [3, 2, -1, 5, 0])
    np.testing.assert_allclose(log.radius, [0.5, 1.0, 0.0, 0.8, 0.25])
    np.testing.assert_array_equal(log.correct, [True, True, False, False, True])
    np.testing.assert_allclose(log.time, [1.5, 2.5, 60.0, 10.0, 86400.0])
    assert log.idx.dtype == np.int64 and log.correct.dtype == bool and log.extra == {}


@pytest.mark.parametrize("delta", [
    datetime.timedelta(seconds=1, microseconds=737771),
    datetime.timedelta(minutes=2, seconds=33, microseconds=474448),
    datetime.timedelta(hours=5, minutes=7),
    datetime.timedelta(days=1, hours=2, minutes=3, seconds=4, microseconds=500000),
    datetime.timedelta(days=3, seconds=59),
    datetime.timedelta(0),
])
def test_parse_time_matches_timedelta(delta):
    assert analysis.parse_time(str(delta)) == pytest.approx(delta.total_seconds(), abs=1e-9)


@pytest.mark.parametrize("text, seconds", [("15.4", 15.4), ("0", 0.0), (" 3e2 ", 300.0)])
def test_parse_time_seconds(text, seconds):
    assert analysis.parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["abc", "", "nan", "inf", "1:2", "0:00:xx", "1 fortnight, 0:00:00"])
def test_parse_time_rejects(text):
    with pytest.raises(ValueError, match="time"):
        analysis.parse_time(text)


def test_prediction_log_and_extra_columns(tmp_path):
    text = ("samples\tidx\tlabel\tpredict\tcorrect\ttime\tnote\n"
            "100\t0\t1\t1\t1\t0:00:01.5\tok\n\n"
            "200\t1\t2\t-1\t0\t2\tabstain\n"
            "300\t2\t3\t4\t0\t3.5\tx\n")
    log = analysis.read_log(write(tmp_path, "pred.tsv", text))
    assert not log.is_certification and log.radius is None and len(log) == 3
    np.testing.assert_array_equal(log.extra["samples"], [100, 200, 300])
    assert log.extra["samples"].dtype == np.int64
    assert list(log.extra["note"]) == ["ok", "abstain", "x"]
    np.testing.assert_allclose(log.time, [1.5, 2.0, 3.5])
    summary = analysis.prediction_summary(log)
    assert summary.n == 3
    assert summary.accuracy == pytest.approx(1 / 3)
    assert summary.abstention_rate == pytest.approx(1 / 3)
    assert summary.mean_time == pytest.approx(7.0 / 3)
    with pytest.raises(ValueError, match="not a certification log"):
        analysis.certified_accuracy(log, [0.0])


def test_certification_log_with_float_extra_column(tmp_path):
    rows = [r + "\t" + str(0.5 * i) for i, r in enumerate(CERT_ROWS)]
    log = cert_log(tmp_path, rows, header=HEADER.rstrip("\n") + "\tpA_lower\n")
    np.testing.assert_allclose(log.extra["pA_lower"], [0.0, 0.5, 1.0, 1.5, 2.0])
    assert analysis.average_certified_radius(log) == pytest.approx(0.35)


@pytest.mark.parametrize("text, fragment", [
    ("", "empty file"),
    (HEADER, "no data rows"),
    ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t0.5\t1\n", "lacks column(s) time"),
    ("idx,label,predict,correct,time\n0,1,1,1,1\n", "lacks column(s)"),
    ("idx\tlabel\tpredict\tcorrect\tcorrect\ttime\n0\t1\t1\t1\t1\t1\n", "duplicate"),
    (HEADER + "0\t1\t1\t0.5\t1\n", "line 2: 5 fields, header has 6"),
    (HEADER + "0\t1\t1\t0.5\t1\t1\n1\t1\t1\tabc\t1\t1\n", "line 3: column 'radius' has 'abc'"),
    (HEADER + "0\t1\t1\t0.5\t2\t1\n", "column 'correct' has '2'; it must be 0 or 1"),
    (HEADER + "0.5\t1\t1\t0.5\t1\t1\n", "column 'idx' has '0.5'; it must be an integer"),
    (HEADER + "0\t1\t1\t0.5\t1\tyesterday\n", "column 'time' has 'yesterday'"),
])
def test_read_log_malformed(tmp_path, text, fragment):
    path = write(tmp_path, "bad.tsv", text)
    with pytest.raises(ValueError) as info:
        analysis.read_log(path)
    message = str(info.value)
    assert str(path) in message and fragment in message and "\n" not in message


def test_read_log_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        analysis.read_log(tmp_path / "nope.tsv")


# ---------------------------------------------------------------- numeric functions (closed forms)

def test_certified_accuracy_hand_computed(tmp_path):
    log = cert_log(tmp_path)
    radii = [0.0, 0.25, 0.3, 0.5, 0.75, 0.8, 1.0, 1.5]
    # Correct rows have radii {0.5, 1.0, 0.25}; the wrong row (radius 0.8) never counts. Denominator 5.
    expected = np.array([3, 3, 2, 2, 1, 1, 1, 0]) / 5
    out = analysis.certified_accuracy(log, radii)
    assert out.shape == (8,)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-15)
    assert analysis.average_certified_radius(log) == pytest.approx((0.5 + 1.0 + 0.25) / 5)
    summary = analysis.prediction_summary(log)
    assert (summary.n, summary.accuracy, summary.abstention_rate) == (5, pytest.approx(0.6), pytest.approx(0.2))


def test_abstention_counts_as_wrong_even_if_marked_correct(tmp_path):
    rows = ["0\t1\t-1\t0.7\t1\t1", "1\t1\t1\t0.4\t1\t1"]
    log = cert_log(tmp_path, rows)
    np.testing.assert_allclose(analysis.certified_accuracy(log, [0.0, 0.5]), [0.5, 0.0])
    assert analysis.average_certified_radius(log) == pytest.approx(0.2)
    assert analysis.prediction_summary(log).accuracy == pytest.approx(0.5)


def test_envelope_hand_computed(tmp_path):
    a = cert_log(tmp_path, ["0\t1\t1\t0.2\t1\t1", "1\t1\t1\t0.2\t1\t1", "2\t1\t1\t0.2\t1\t1",
                            "3\t1\t1\t0.0\t0\t1"], "a.tsv")  # 0.75 up to r=0.2, then 0
    b = cert_log(tmp_path, ["0\t1\t1\t2.0\t1\t1", "1\t1\t0\t0.0\t0\t1"], "b.tsv")  # 0.5 up to r=2
    radii = [0.0, 0.2, 0.5, 2.0, 2.5]
    np.testing.assert_allclose(analysis.envelope([a, b], radii), [0.75, 0.75, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(analysis.certified_accuracy_matrix([a, b], radii),
                               [[0.75, 0.75, 0, 0, 0], [0.5, 0.5, 0.5, 0.5, 0]])


@pytest.mark.parametrize("radii", [[], [-0.5], [np.nan], [[0.1, 0.2]]])
def test_bad_radii_rejected(tmp_path, radii):
    with pytest.raises(ValueError, match="radii"):
        analysis.certified_accuracy(cert_log(tmp_path), radii)


@pytest.mark.parametrize("text, expected", [
    ("0,0.25,0.5", [0.0, 0.25, 0.5]),
    ("0.25:1.5:0.25", [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]),
    ("0:1:0.3", [0.0, 0.3, 0.6, 0.9]),
    ("0.5:0.5:1", [0.5]),
    ("1.5", [1.5]),
])
def test_parse_radii(text, expected):
    np.testing.assert_allclose(analysis.parse_radii(text), expected, atol=1e-12)


@pytest.mark.parametrize("text", ["", "a,b", "1:0:0.5", "0:1:0", "0:1", "0:1:-0.1", "-1,2", "0,,1"])
def test_parse_radii_rejects(text):
    with pytest.raises(ValueError, match="radii"):
        analysis.parse_radii(text)


def test_default_radii(tmp_path):
    np.testing.assert_allclose(analysis.default_radii([cert_log(tmp_path)]), [0.0, 0.25, 0.5, 0.75, 1.0])
    wide = synthetic_log(tmp_path, "wide.tsv", 2, 1, radius=3.1)  # 0.25-steps would need 13 columns
    np.testing.assert_allclose(analysis.default_radii([wide]), [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])


# ---------------------------------------------------------------- table layout and bolding rule

def test_markdown_and_latex_layout_small(tmp_path):
    log = cert_log(tmp_path)
    md = analysis.markdown_table([log], ["A"], [0.25, 1.0])
    assert md == ("|  | r = 0.25 |r = 1.0 |\n"
                  "| --- |  --- | --- |\n"
                  "<b> A </b>| 0.60<b>*</b> |0.20<b>*</b> |\n")
    tex = analysis.latex_table([log], ["A"], [0.25, 1.0], acr=True)
    assert tex == ("& $r = 0.25$& $r = 1.0$& ACR\\\\\n"
                   "\\midrule\n"
                   "A & \\textbf{0.60} & \\textbf{0.20} & \\textbf{0.350}\\\\\n")


def test_bold_uses_unrounded_values(tmp_path):
    # 2/3 = 0.6667 and 67/100 = 0.67 both print as 0.67; only the larger (67/100) is marked, in either order.
    small = synthetic_log(tmp_path, "small.tsv", 3, 2)
    big = synthetic_log(tmp_path, "big.tsv", 100, 67)
    for logs, labels, winner in [([small, big], ["s", "b"], "b"), ([big, small], ["b", "s"], "b")]:
        md = analysis.markdown_table(logs, labels, [0.5]).splitlines()
        assert md[2:] == [f"<b> {x} </b>| 0.67{'<b>*</b>' if x == winner else ''} |" for x in labels]


def test_bold_ties_go_to_first_row(tmp_path):
    a = synthetic_log(tmp_path, "a.tsv", 4, 2)
    b = synthetic_log(tmp_path, "b.tsv", 2, 1)
    tex = analysis.latex_table([a, b], ["a", "b"], [0.5, 2.0]).splitlines()
    assert tex[2:] == ["a & \\textbf{0.50} & \\textbf{0.00}\\\\", "b & 0.50 & 0.00\\\\"]


def test_table_label_count_mismatch(tmp_path):
    with pytest.raises(ValueError, match="one label per log"):
        analysis.markdown_table([cert_log(tmp_path)], ["a", "b"], [0.5])


# ---------------------------------------------------------------- published Cohen et al. (2019) material

def _need_cohen():
    if not COHEN.is_dir():
        pytest.skip(f"shared reference material not found at {COHEN}")


VARY_NOISE = {
    "cifar10": ("cifar10/resnet110", ["0.12", "0.25", "0.50", "1.00"], (0.25, 1.5, 0.25)),
    "imagenet": ("imagenet/resnet50", ["0.25", "0.50", "1.00"], (0.5, 3.0, 0.5)),
}


@pytest.mark.parametrize("dataset", sorted(VARY_NOISE))
def test_vary_noise_tables_match_reference_files(dataset):
    _need_cohen()
    model, sigmas, (start, stop, step) = VARY_NOISE[dataset]
    logs = [analysis.read_log(COHEN / f"data/certify/{model}/noise_{s}/test/sigma_{s}") for s in sigmas]
    radii = np.arange(start, stop + step, step)
    md = analysis.markdown_table(logs, [f"&sigma; = {s}" for s in sigmas], radii)
    assert md.encode() == (COHEN / f"analysis/markdown/vary_noise_{dataset}").read_bytes()
    tex = analysis.latex_table(logs, [f"$\\sigma = {s}$" for s in sigmas], radii)
    assert tex.encode() == (COHEN / f"analysis/latex/vary_noise_{dataset}").read_bytes()


@pytest.mark.parametrize("sigma, acr", [("0.50", 0.733), ("1.00", 0.875)])
def test_imagenet_acr_matches_published(sigma, acr):
    # Zhai et al. 2020 (MACER), ImageNet results table, rows "Cohen-0.50" / "Cohen-1.00": ACR of these released logs.
    _need_cohen()
    log = analysis.read_log(COHEN / f"data/certify/imagenet/resnet50/noise_{sigma}/test/sigma_{sigma}")
    assert round(analysis.average_certified_radius(log), 3) == acr


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_all_reference_logs_parse_and_agree_with_csv():
    _need_cohen()
    paths = sorted(p for p in (COHEN / "data").rglob("*") if p.is_file())
    assert len(paths) >= 16
    for path in paths:
        log, rows = analysis.read_log(path), _csv_rows(path)
        assert len(log) == len(rows) > 0
        np.testing.assert_array_equal(log.idx, [int(r["idx"]) for r in rows])
        seconds = [sum(float(x) * m for x, m in zip(reversed(r["time"].split(":")), (1, 60, 3600))) for r in rows]
        np.testing.assert_allclose(log.time, seconds, rtol=0, atol=1e-9)
        good = [r["correct"] == "1" and r["predict"] != "-1" for r in rows]
        assert analysis.prediction_summary(log).accuracy == pytest.approx(np.mean(good))
        if log.is_certification:
            radius = [float(r["radius"]) for r in rows]
            acr = sum(rad for rad, g in zip(radius, good) if g) / len(rows)
            assert analysis.average_certified_radius(log) == pytest.approx(acr)


# ---------------------------------------------------------------- plotting

def _png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    a, b = cert_log(tmp_path, name="a.tsv"), synthetic_log(tmp_path, "b.tsv", 4, 3)
    out = tmp_path / "plot.png"
    analysis.plot_certified_accuracy([(a, "sigma 0.25"), (b, "sigma 0.5")], out)
    width, height = _png_size(out)
    assert width > 100 and height > 100 and out.stat().st_size > 2000
    single = tmp_path / "single.png"
    analysis.plot_certified_accuracy(a, single, radii=[0.0, 0.5, 1.0])
    assert _png_size(single) == (width, height)


def test_plot_without_matplotlib_names_extra(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install smoothjax\[plot\]"):
        analysis.plot_certified_accuracy(cert_log(tmp_path), tmp_path / "x.png")


# ---------------------------------------------------------------- command line

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "smoothjax.analysis", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_reproduces_reference_markdown():
    _need_cohen()
    sigmas = ["0.25", "0.50", "1.00"]
    logs = [COHEN / f"data/certify/imagenet/resnet50/noise_{s}/test/sigma_{s}" for s in sigmas]
    labels = ",".join(f"&sigma; = {s}" for s in sigmas)
    result = run_cli(*logs, "--radii", "0.5:3.0:0.5", "--no-acr", f"--labels={labels}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (COHEN / "analysis/markdown/vary_noise_imagenet").read_text()


def test_cli_certification_and_prediction_logs(tmp_path):
    cert = write(tmp_path, "cert.tsv", HEADER + "\n".join(CERT_ROWS) + "\n")
    pred = write(tmp_path, "pred.tsv", "idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0:00:01\n"
                 "1\t1\t-1\t0\t0:00:03\n2\t1\t2\t0\t2\n3\t5\t5\t1\t2\n")
    result = run_cli(cert, pred, "--radii", "0,0.5,1", "--labels=C,P")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "|  | r = 0.0 |r = 0.5 |r = 1.0 |ACR |",
        "| --- |  --- | --- | --- | --- |",
        "<b> C </b>| 0.60<b>*</b> |0.40<b>*</b> |0.20<b>*</b> |0.350<b>*</b> |",
        "P: n=4 accuracy=0.5000 abstention=0.2500 mean_time=2.000s",
    ]
    latex = run_cli(cert, "--latex", "--radii", "0.5")
    assert latex.returncode == 0, latex.stderr
    assert latex.stdout.splitlines()[2] == f"{cert} & \\textbf{{0.40}} & \\textbf{{0.350}}\\\\"


def test_cli_same_images_compares_a_partial_log_on_the_images_it_covers(tmp_path):
    cert = write(tmp_path, "cert.tsv", HEADER + "\n".join(CERT_ROWS) + "\n")
    partial = write(tmp_path, "partial.tsv", HEADER + "1\t2\t2\t0.3\t1\t1\n3\t4\t4\t0.6\t1\t1\n")
    result = run_cli(cert, partial, "--radii", "0,0.5", "--labels=full,partial", "--same_images")
    assert result.returncode == 0, result.stderr
    # By hand, idx 1 and 3 only: full has radius 1.0 (correct) and a wrong prediction; partial 0.3 and 0.6, both right.
    assert result.stdout.splitlines() == [
        "2 images every log has (idx 1 to 3)",
        "|  | r = 0.0 |r = 0.5 |ACR |",
        "| --- |  --- | --- | --- |",
        "<b> full </b>| 0.50 |0.50<b>*</b> |0.500<b>*</b> |",
        "<b> partial </b>| 1.00<b>*</b> |0.50 |0.450 |",
    ]
    disjoint = write(tmp_path, "disjoint.tsv", HEADER + "9\t2\t2\t0.3\t1\t1\n")
    result = run_cli(cert, disjoint, "--same_images")
    assert result.returncode == 2 and result.stderr.strip() == "error: --same_images: the 2 logs have no idx in common"


def test_cli_plot(tmp_path):
    pytest.importorskip("matplotlib")
    cert = write(tmp_path, "cert.tsv", HEADER + "\n".join(CERT_ROWS) + "\n")
    out = tmp_path / "cli.png"
    result = run_cli(cert, "--plot", out)
    assert result.returncode == 0, result.stderr
    assert "r = 1.0 |" in result.stdout  # default radii 0..1 in steps of 0.25
    _png_size(out)


@pytest.mark.parametrize("case", ["missing", "radii", "range", "labels", "malformed", "plot_pred", "no_log"])
def test_cli_bad_input(tmp_path, case):
    cert = write(tmp_path, "cert.tsv", HEADER + "\n".join(CERT_ROWS) + "\n")
    pred = write(tmp_path, "pred.tsv", "idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t1\n")
    bad = write(tmp_path, "bad.tsv", HEADER + "0\t1\t1\n")
    args, fragment = {
        "missing": ((tmp_path / "nope.tsv",), "nope.tsv"),
        "radii": ((cert, "--radii", "0,x"), "radii '0,x'"),
        "range": ((cert, "--radii", "2:1:0.5"), "radii '2:1:0.5'"),
        "labels": ((cert, "--labels=a,b"), "one label per LOG"),
        "malformed": ((bad,), "3 fields, header has 6"),
        "plot_pred": ((pred, "--plot", tmp_path / "p.png"), "--plot needs"),
        "no_log": ((), "LOG"),
    }[case]
    result = run_cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_cli_reports_empirical_robust_accuracy_next_to_certified(tmp_path, capsys):
    """Attacked PREDICT logs get a table per sigma: hand-counted accuracies (abstention = wrong) per attack and
    radius, blank where an attack has no log, and the certification log of the same sigma at those radii."""
    pred_header = "idx\tlabel\tpredict\tcorrect\ttime\n"
    rows = {"pgd_eps_0.25_steps_20_m_8": ["1\t1\t1\t0.5", "1\t1\t1\t0.5", "1\t2\t0\t0.5", "1\t-1\t0\t0.5"],
            "pgd_eps_1.0_steps_20_m_8": ["1\t1\t1\t0.5", "1\t2\t0\t0.5", "1\t2\t0\t0.5", "1\t2\t0\t0.5"],
            "ddn_eps_1.0_steps_3_m_1_base": ["1\t1\t1\t0.5", "1\t1\t1\t0.5", "1\t1\t1\t0.5", "1\t2\t0\t0.5"]}
    paths = []
    for name, lines in rows.items():
        text = pred_header + "".join(f"{i}\t{line}\n" for i, line in enumerate(lines))
        paths.append(str(write(tmp_path, f"predict_{name}_sigma_0.25.tsv", text)))
    cert = write(tmp_path, "certify_sigma_0.25.tsv", HEADER + "\n".join(CERT_ROWS) + "\n")
    other = write(tmp_path, "certify_sigma_0.5.tsv", HEADER + "\n".join(CERT_ROWS[:2]) + "\n")
    assert analysis.main([str(other), str(cert)] + paths) == 0
    out = capsys.readouterr().out
    assert "sigma = 0.25" in out
    assert "| radius | 0.25 | 1.0 |" in out
    assert "| empirical (PGD T=20 m=8) | 0.500 | 0.250 |" in out
    assert "| empirical (DDN T=3 m=1 base) |  | 0.750 |" in out
    # CERT_ROWS: correct radii 0.5, 1.0, 0.25 of 5 rows -> 3/5 at r = 0.25 and 1/5 at r = 1.0 (sigma 0.25's log).
    assert "| certified | 0.600 | 0.200 |" in out
    with pytest.raises(ValueError, match="second log of PGD T=20 m=8 at epsilon 0.25"):
        analysis.robustness_table([analysis.read_log(paths[0])] * 2)
