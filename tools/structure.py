"""Measure masklab's structure from the source text alone: import cycles, module and function sizes.

    python tools/structure.py            # a report; exit 1 when a limit is broken
    python tools/structure.py --json     # the figures as JSON

What counts:

- **imports**: every ``import masklab...`` / ``from masklab... import ...`` anywhere in a module, inside
  functions too (an import moved into a function to dodge a cycle is still a dependency). ``from pkg import
  name`` counts as an import of ``pkg.name`` when that is a module, else of ``pkg``. A module's implicit
  import of its own parent packages is not counted (that is how Python packages work, not a design choice).
- **cycles**: strongly connected components of that graph with more than one module (or a self-import).
- **folders**: the same graph between top-level folders of ``masklab/`` (``cli``, ``models``, ...); a
  cycle there means two stages depend on each other.
- **sizes**: lines per module (newlines + 1, as editors count) and per function (``def`` line to its last
  line, nested functions counted inside their parent too).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "masklab"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 100


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve_relative(mod: str, is_pkg: bool, level: int, target: str | None) -> str:
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def imports_of(path: Path, modules: set[str]) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every masklab import in ``path``."""
    mod = module_name(path)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.split(".")[0] == PACKAGE:
                        out.append((_known(a.name, modules), child.lineno, in_func))
            elif isinstance(child, ast.ImportFrom):
                src = child.module or ""
                if child.level:
                    src = _resolve_relative(mod, is_pkg, child.level, child.module)
                if src.split(".")[0] != PACKAGE:
                    continue
                for a in child.names:
                    full = f"{src}.{a.name}"
                    out.append((full if full in modules else _known(src, modules), child.lineno, in_func))
            visit(child, inner)

    visit(tree, False)
    return [(t, ln, f) for t, ln, f in out if t != mod]


def _known(name: str, modules: set[str]) -> str:
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components with more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        comps.append(sorted(comp))
    return comps


def measure() -> dict:
    files = sorted((ROOT / PACKAGE).rglob("*.py"))
    modules = {module_name(p) for p in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    n_imports = n_local = 0
    module_lines: dict[str, int] = {}
    functions: list[tuple[str, int]] = []
    for p in files:
        mod = module_name(p)
        src = p.read_text(encoding="utf-8")
        module_lines[str(p.relative_to(ROOT))] = src.count("\n") + 1
        for target, _line, local in imports_of(p, modules):
            graph[mod].add(target)
            n_imports += 1
            n_local += local
        for f in ast.walk(ast.parse(src)):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((f"{p.relative_to(ROOT)}:{f.name}", f.end_lineno - f.lineno + 1))
    folder_graph: dict[str, set[str]] = {}
    for m, targets in graph.items():
        a = _folder(m)
        folder_graph.setdefault(a, set())
        for t in targets:
            b = _folder(t)
            folder_graph.setdefault(b, set())
            if a != b:
                folder_graph[a].add(b)
    cycles = strongly_connected(graph)
    folder_cycles = strongly_connected(folder_graph)
    functions.sort(key=lambda x: -x[1])
    longest_module = max(module_lines.items(), key=lambda x: x[1])
    return {
        "modules": len(modules),
        "imports": n_imports,
        "imports_inside_functions": n_local,
        "module_cycles": cycles,
        "folder_cycles": folder_cycles,
        "folder_graph": {k: sorted(v) for k, v in sorted(folder_graph.items())},
        "longest_module": {"path": longest_module[0], "lines": longest_module[1]},
        "longest_function": {"name": functions[0][0], "lines": functions[0][1]},
        "modules_over_limit": sorted((p, n) for p, n in module_lines.items() if n > MAX_MODULE_LINES),
        "functions_over_limit": [(f, n) for f, n in functions if n > MAX_FUNCTION_LINES],
    }


def _folder(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "(top)"


def problems(m: dict) -> list[str]:
    out = [f"import cycle: {' <-> '.join(c)}" for c in m["module_cycles"]]
    out += [f"folder cycle: {' <-> '.join(c)}" for c in m["folder_cycles"]]
    out += [f"{p} is {n} lines (limit {MAX_MODULE_LINES})" for p, n in m["modules_over_limit"]]
    out += [f"{f} is {n} lines (limit {MAX_FUNCTION_LINES})" for f, n in m["functions_over_limit"]]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    m = measure()
    if args.json:
        print(json.dumps(m, indent=2))
    else:
        print(f"{m['modules']} modules, {m['imports']} internal imports ({m['imports_inside_functions']} inside functions)")
        print(f"module cycles: {len(m['module_cycles'])}; folder cycles: {len(m['folder_cycles'])}")
        print(f"longest module: {m['longest_module']['path']} ({m['longest_module']['lines']} lines)")
        print(f"longest function: {m['longest_function']['name']} ({m['longest_function']['lines']} lines)")
        for p in problems(m):
            print("  -", p)
    return 1 if problems(m) else 0


if __name__ == "__main__":
    sys.exit(main())
