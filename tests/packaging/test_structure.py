"""The package's shape: imports point one way (no cycles), and the repository documents itself."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"inductor_quant": REPO / "inductor_quant", "inductor_quant.passes": REPO / "passes",
         "inductor_quant.kernels": REPO / "kernels"}


def _modules() -> dict:
    """dotted module name -> path, for the product code (front end, passes, kernels)."""
    out = {}
    for package, folder in ROOTS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> set:
    """Modules of ours that `name` imports, anywhere in the file (a lazy import inside a function
    is still a dependency: the install <-> builtins cycle was one)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {m for m in found if m in modules and m != name}


def test_no_import_cycles():
    modules = _modules()
    edges = {name: _imports(name, path, modules) for name, path in modules.items()}
    # a package's __init__ importing its own submodules is how packages work; a submodule
    # importing its own package's __init__ back is not a cycle we count
    edges = {m: {d for d in ds if not (m.startswith(d + ".") and d in ROOTS)} for m, ds in edges.items()}
    state, cycles = {}, []

    def dfs(node, stack):
        state[node] = "open"
        for dep in sorted(edges[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                dfs(dep, stack + [dep])
        state[node] = "done"

    for m in sorted(edges):
        if m not in state:
            dfs(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_kernels_import_neither_passes_nor_the_front_end():
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("inductor_quant.kernels"):
            bad = {m for m in _imports(name, path, modules) if not m.startswith("inductor_quant.kernels")}
            assert not bad, f"{name} imports {bad}"


def test_nothing_points_outside_the_repository():
    """Code and docs reference files a maintainer of this repository has."""
    outside = re.compile(r"\.\./shared|DESIGN\.md|/work/")
    files = [p for p in REPO.rglob("*") if p.suffix in (".py", ".md", ".toml", ".sh") or p.name == "Makefile"]
    hits = [f"{p.relative_to(REPO)}:{i}" for p in files
            if not any(part.startswith(".") or part in ("build", "results") or part.endswith("egg-info")
                       for part in p.relative_to(REPO).parts) and p != Path(__file__)
            for i, line in enumerate(p.read_text(errors="ignore").splitlines(), 1) if outside.search(line)]
    assert not hits, hits
    assert (REPO / "docs" / "ARCHITECTURE.md").is_file()
