"""The house rules of the layout, checked mechanically (issue 17's acceptance): no import cycle in smoothjax/ (every
import statement, inside functions too, read from the AST), at most 10 top-level modules beside at least 5
subpackages, jobs above methods above the core with no import upward, no argparse anywhere, benchmarks/ within 1,500
lines of Python, a README of at most 15,000 characters with a docs/ folder, a docstring in every module, and every
old public path still importable with its documented functions."""

import ast
import importlib
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "smoothjax"
SKIP_DIRS = {".venv", ".git", ".cache", "build", "dist", "runs", "results", "__pycache__", ".pytest_cache"}


def _python_files(root: Path = ROOT) -> list:
    return sorted(p for p in root.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(ROOT).parts)
                  and ".egg-info" not in str(p))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in _python_files(PACKAGE)}


def _imports(name: str) -> set:
    """Every smoothjax module ``name`` imports, at any depth of its AST: ``from X import a`` counts as X.a when that
    is a module, else X; ``importlib.import_module("smoothjax.jobs." + ...)`` as every module under the prefix.
    (Parent packages that Python initialises on the way are not edges, as in import-linter and pydeps.)"""
    path, found = MODULES[name], set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args
              and isinstance(node.args[0], (ast.Constant, ast.JoinedStr))):
            first = node.args[0].value if isinstance(node.args[0], ast.Constant) else node.args[0].values[0].value
            found |= {m for m in MODULES if m.startswith(first) and m != name}
    return {m for m in found if m in MODULES} - {name}


GRAPH = {name: _imports(name) for name in MODULES}


def test_no_import_cycle_in_smoothjax():
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles
    assert sum(len(v) for v in GRAPH.values()) > 100  # the parse found the imports (the check is not vacuous)


def test_at_most_ten_top_level_modules_beside_at_least_five_subpackages():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))  # __init__.py counted
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert len(modules) <= 10, modules
    assert len(packages) >= 5, packages


# The layers: a module may import its own layer or lower ones, never higher. The old paths kept as re-exports, and the
# package root (``smoothjax.SmoothedClassifier``, loaded lazily), sit above everything, so nothing in the library
# depends on them.
CORE = ("smoothjax.noise", "smoothjax.loops", "smoothjax.training", "smoothjax.parallel", "smoothjax.checkpointing",
        "smoothjax.models", "smoothjax.data", "smoothjax.analysis")
METHODS = ("smoothjax.certification", "smoothjax.smoothadv", "smoothjax.siam", "smoothjax.torch_import",
           "smoothjax.certified_training")
OLD_PATHS = ("smoothjax.sequential", "smoothjax.attacks", "smoothjax.smoothing", "smoothjax.robustness_eval")


def _layer(name: str) -> int:
    top = ".".join(name.split(".")[:2])
    if name == "smoothjax":
        return 3
    if top in CORE:
        return 0
    if top in METHODS:
        return 1
    if top == "smoothjax.jobs":
        return 2
    assert top in OLD_PATHS, f"{name} belongs to no layer"
    return 3


def test_jobs_above_methods_above_the_core_and_no_method_depends_on_another():
    upward = [(a, b) for a, deps in GRAPH.items() for b in deps if _layer(b) > _layer(a)]
    assert not upward, upward
    package = lambda m: ".".join(m.split(".")[:2])  # noqa: E731
    across = [(a, b) for a, deps in GRAPH.items() for b in deps
              if _layer(a) == _layer(b) == 1 and package(a) != package(b)]
    assert not across, across  # certification uses no attack code; SmoothAdv and SIAM stay apart


def test_certify_py_reads_as_one_pass_down_the_layers():
    """From certify.py, every import goes down (script -> jobs -> methods -> core) or sideways within a folder."""
    script = {m for m in (a.name for n in ast.walk(ast.parse((ROOT / "certify.py").read_text())) if
                          isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names) if m in MODULES}
    script |= {f"smoothjax.{a.name}" for n in ast.walk(ast.parse((ROOT / "certify.py").read_text()))
               if isinstance(n, ast.ImportFrom) and n.module == "smoothjax" for a in n.names}
    script |= {"smoothjax.jobs.certify"}  # jobs.run("certify", ...) imports it by name
    seen, todo = set(), sorted(script & set(MODULES))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += sorted(GRAPH[module])
    assert {_layer(m) for m in seen} == {0, 1, 2} and not any(_layer(m) == 3 for m in seen)
    assert all(_layer(b) <= _layer(a) for a in seen for b in GRAPH[a])


def test_no_argparse_in_the_repository():
    """No module imports argparse and no file names its parser class: every command line is absl flags. (The PyTorch
    unpickler names ``argparse.Namespace`` as data: a class some checkpoints pickle, replaced by an inert stand-in.)"""
    offenders = []
    for path in _python_files():
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "argparse" for n in names):
                offenders.append(str(path))
        if "Argument" + "Parser" in source:
            offenders.append(str(path))
    assert not offenders, offenders


def test_benchmarks_are_at_most_1500_lines_of_python():
    lines = sum(len(p.read_text().splitlines()) for p in (ROOT / "benchmarks").rglob("*.py"))
    assert lines <= 1500, lines


def test_readme_is_an_entry_point_with_a_docs_folder():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) <= 15_000, len(readme)
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert {"certification.md", "smoothadv.md", "siam.md", "checkpoint_import.md", "performance.md",
            "reliability.md"} <= pages, pages
    for link in [part.split(")")[0] for part in readme.split("](docs/")[1:]]:
        assert (ROOT / "docs" / link.split("#")[0]).exists(), link


def test_every_module_has_a_docstring():
    missing = [str(p) for p in _python_files() if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, missing


PUBLIC = {
    "smoothjax.certification": ["certify", "predict", "sample_counts", "Certificate", "lower_confidence_bound",
                                "binomial_test_pvalue", "certified_radius", "certify_from_counts",
                                "predict_from_counts", "certify_sequential", "certify_randomized"],
    "smoothjax.sequential": ["certify_sequential", "SequentialCertificate", "METHODS", "FUTILITY_RULES",
                             "check_radii", "projected_failures_table"],
    "smoothjax.attacks": ["smooth_pgd_l2", "smooth_ddn", "smoothed_cross_entropy", "project_l2",
                          "ddn_gamma_for_prediction"],
    "smoothjax.smoothing": ["smoothed_predict", "smoothed_scores", "smoothed_apply_fn", "class_scores",
                            "top_k_classes", "stochastic_logits", "check_mode", "MODES"],
    "smoothjax.models": ["get_model", "make_apply_fn", "make_stochastic_apply_fn", "is_stochastic", "count_params",
                         "MODEL_NAMES"],
    "smoothjax.checkpointing": ["load_model", "load_variables", "Checkpointer", "read_model_spec",
                                "write_model_spec"],
    "smoothjax.noise": ["gaussian_noise", "add_gaussian_noise", "noisy_copies", "check_sigma"],
    "smoothjax.analysis": ["read_log", "EvalLog", "certified_accuracy", "average_certified_radius", "markdown_table",
                           "latex_table", "plot_certified_accuracy", "parse_radii", "default_radii",
                           "prediction_summary", "samples_summary", "attack_name", "parse_attack",
                           "robustness_table", "empirical_robust_accuracy", "main"],
    "smoothjax.torch_import": ["load", "import_checkpoint", "sigma_from_path", "UnsafeCheckpointError"],
    "smoothjax.smoothadv": ["smoothadv_loss", "warmup_epsilon", "loss_from_config", "check_settings"],
    "smoothjax.siam": ["adversarial_training_loss", "loss_from_config", "eval_apply_fn"],
    "smoothjax.robustness_eval": ["evaluate_grid", "evaluate_dataset", "Programs", "noisy_apply_fn",
                                  "as_noise_sd", "write_results"],
    "smoothjax.data": ["get_source", "Loader", "fingerprint"],
    "smoothjax.training": ["make_train_step", "gaussian_augmentation_loss", "make_optimizer"],
    "smoothjax.parallel": ["make_mesh", "initialize_distributed", "to_global"],
}


@pytest.mark.parametrize("path", sorted(PUBLIC))
def test_public_paths_import_with_their_functions(path):
    module = importlib.import_module(path)
    missing = [name for name in PUBLIC[path] if not hasattr(module, name)]
    assert not missing, missing
