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
- **layers**: each top-level folder sits on a layer (:data:`LAYERS`, low to high); a folder importing
  one on a higher layer is a violation, even inside a function.
- **option defaults**: places outside ``masklab/settings.py`` that give a model option a default value
  (a parameter or dataclass field named like one with a default other than None, or an argparse flag
  for one with such a default). The model table (``models/zoo.py``), which holds each architecture's
  own defaults, is the one place expected to remain.
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

#: top-level folders (and modules) of masklab/, low to high. "(top)" is masklab/__init__.py, the facade.
LAYERS = (
    ("errors", "_version", "optional", "settings", "hardware"),
    ("structures",),
    ("visualize",),
    ("io",),
    ("interop",),
    ("models",),
    ("export",),
    ("runtime",),
    ("inference",),
    ("(top)",),
    ("explain",),
    ("data",),
    ("evaluation",),
    ("tracking",),
    ("runs", "training", "bench", "serve"),
    ("compat",),
    ("cli",),
    ("demo", "__main__"),
)
#: names a model option goes by (InferenceSettings fields and their older / torchvision / matterport names)
OPTION_NAMES = frozenset({
    "score_thresh", "min_score", "box_score_thresh", "nms_thresh", "box_nms_thresh", "max_detections",
    "box_detections_per_img", "proposals", "rpn_post_nms_top_n", "rpn_post_nms_top_n_test", "min_size",
    "max_size", "DETECTION_MIN_CONFIDENCE", "DETECTION_NMS_THRESHOLD", "DETECTION_MAX_INSTANCES",
    "POST_NMS_ROIS_INFERENCE", "IMAGE_MIN_DIM", "IMAGE_MAX_DIM",
})


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
    options: list[str] = []
    violations: list[str] = []
    for p in files:
        mod = module_name(p)
        src = p.read_text(encoding="utf-8")
        module_lines[str(p.relative_to(ROOT))] = src.count("\n") + 1
        for target, line, local in imports_of(p, modules):
            graph[mod].add(target)
            n_imports += 1
            n_local += local
            la, lb = layer_of(_folder(mod)), layer_of(_folder(target))
            if la is None or lb is None or lb > la:
                violations.append(f"{p.relative_to(ROOT)}:{line} ({_folder(mod)}) imports {target} ({_folder(target)})")
        tree = ast.parse(src)
        if p.relative_to(ROOT).as_posix() != f"{PACKAGE}/settings.py":
            options += [f"{p.relative_to(ROOT)}:{ln} {name}" for name, ln in option_declarations(tree)]
        for f in ast.walk(tree):
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
        "layer_violations": violations,
        "option_declarations": options,
        "longest_module": {"path": longest_module[0], "lines": longest_module[1]},
        "longest_function": {"name": functions[0][0], "lines": functions[0][1]},
        "modules_over_limit": sorted((p, n) for p, n in module_lines.items() if n > MAX_MODULE_LINES),
        "functions_over_limit": [(f, n) for f, n in functions if n > MAX_FUNCTION_LINES],
    }


def option_declarations(tree: ast.AST) -> list[tuple[str, int]]:
    """``(name, line)`` for each declaration of a model option with a default in ``tree``."""
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            pos = a.posonlyargs + a.args
            pairs = list(zip(pos[len(pos) - len(a.defaults):], a.defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
            out += [(x.arg, node.lineno) for x, d in pairs if x.arg in OPTION_NAMES and _is_value(d)]
        elif isinstance(node, ast.ClassDef):
            for st in node.body:
                if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name) and _is_value(st.value):
                    if st.target.id in OPTION_NAMES:
                        out.append((st.target.id, st.lineno))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--"):
                    defaults = [k.value for k in node.keywords if k.arg == "default"]
                    if arg.value[2:].replace("-", "_") in OPTION_NAMES and (not defaults or _is_value(defaults[0])):
                        out.append((arg.value[2:].replace("-", "_"), node.lineno))
    return out


def _is_value(node: ast.AST | None) -> bool:
    """A default that sets a value (not None, which means "not given: the model's default")."""
    if node is None or (isinstance(node, ast.Constant) and node.value is None):
        return False
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value is None:
        return False  # Query(None, ...) and the like: a parameter with no default value
    return not (isinstance(node, ast.Attribute) and node.attr == "SUPPRESS")  # argparse: no default at all


def layer_of(folder: str) -> int | None:
    return next((i for i, names in enumerate(LAYERS) if folder in names), None)


def _folder(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "(top)"


def problems(m: dict) -> list[str]:
    out = [f"import cycle: {' <-> '.join(c)}" for c in m["module_cycles"]]
    out += [f"folder cycle: {' <-> '.join(c)}" for c in m["folder_cycles"]]
    out += [f"layer violation: {v}" for v in m["layer_violations"]]
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
        print(f"layer violations: {len(m['layer_violations'])}; model-option declarations outside settings.py: "
              f"{len(m['option_declarations'])} in {len({o.split(':')[0] for o in m['option_declarations']})} files")
        print(f"longest module: {m['longest_module']['path']} ({m['longest_module']['lines']} lines)")
        print(f"longest function: {m['longest_function']['name']} ({m['longest_function']['lines']} lines)")
        for p in problems(m):
            print("  -", p)
    return 1 if problems(m) else 0


if __name__ == "__main__":
    sys.exit(main())
