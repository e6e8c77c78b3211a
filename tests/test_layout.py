"""The package's shape: a package per study over shared layers, no import circle, no study
importing another, short modules, classes at module level, and every document the code cites
present in the repository."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KILIB = ROOT / "kilib"
STUDIES = ("sft", "transfer", "calm", "memory")
MAX_LINES = 650  # "a few hundred lines" per idea; a module past this holds more than one


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(KILIB.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def kilib_imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The kilib modules ``path`` imports (``from kilib.x import y`` counts ``kilib.x.y`` where
    that is a module, else ``kilib.x``)."""
    known = modules()
    tree = ast.parse(path.read_text())
    # module level: the body and its `if` blocks (TYPE_CHECKING included), not functions
    nodes = [n for top in tree.body for n in (ast.walk(top) if isinstance(top, ast.If) else [top])]
    nodes = nodes if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("kilib")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kilib"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {m for m in found if m in known and m != "kilib"}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in STUDIES) else "kilib"


def test_no_study_imports_another_and_shared_code_imports_no_study():
    for name, path in modules().items():
        mine = package_of(name)
        for imported in kilib_imports(path):
            theirs = package_of(imported)
            if theirs in STUDIES and theirs != mine:
                # the benchmarks and the budget measure every study; the CLI runs them
                assert mine in ("bench", "budget") or name == "kilib.cli", f"{name} imports the study module {imported}"


def test_no_import_circle():
    """Module-level imports, type-only ones included, form no cycle."""
    graph = {name: kilib_imports(path, top_level_only=True) for name, path in modules().items()}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_modules_are_short():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_classes_at_module_level():
    """No class built inside a function (a factory hides the class from a reader)."""
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n.name for n in ast.walk(node) if isinstance(n, ast.ClassDef)]
                assert not inner, f"{name}.{node.name} defines class(es) {inner}"


def test_package_inits_import_nothing():
    for path in KILIB.rglob("__init__.py"):
        body = ast.parse(path.read_text()).body
        assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body), path


def texts(*folders: str):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".md") and path.is_file():
                yield path, path.read_text()


def test_every_cited_document_is_in_the_repository():
    """What the code, tests, notebooks and README cite under docs/ exists; nothing cites a
    document by a bare name or outside the repository."""
    outside = "../" + "shared"  # the development notes beside the checkout (spelt so as not to match here)
    for path, text in [
        *texts("kilib", "tests", "notebooks", "tools"),
        (ROOT / "README.md", (ROOT / "README.md").read_text()),
    ]:
        where = path.relative_to(ROOT)
        for doc in set(re.findall(r"\bdocs/[\w./-]+\.md", text)):
            assert (ROOT / doc).is_file(), f"{where} cites {doc}, which does not exist"
        bare = re.findall(r"(?<![\w/])(?:methods|tiny-world)\.md", text)
        assert not bare, f"{where} cites {bare[0]} outside docs/: cite docs/{bare[0]}"
        assert outside not in text, f"{where} cites {outside}, which users do not have"
    for path, text in texts("docs"):
        for link in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", text):
            assert (path.parent / link).is_file(), f"{path.relative_to(ROOT)} links {link}, which does not exist"


def test_one_name_per_notebook_parameter():
    """The seeds parameter is SEEDS wherever a notebook has one, so -p SEEDS reaches them all."""
    for source in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        text = source.read_text()
        cell = text.split('tags=["parameters"]', 1)[1].split("# %%", 1)[0]
        names = re.findall(r"^(\w+)\s*:", cell, re.M)
        assert names and names[0] == "PROFILE", source.name
        assert not {"SEED", "N_SEEDS"} & set(names), f"{source.name}: use SEEDS (or WORLD_SEED for the world)"
