"""The structure figures of issue 30, for any checkout: settings paths, layering, cycles, sizes.

    python benchmarks/architecture_report.py [CHECKOUT]     # default: this one

Figures (measured from the source alone, nothing imported from the checkout but its import
graph, so an older commit can be measured the same way):

* **settings paths**: starting at `build_bank` (the front door) and at `run_benchmark`,
  every call that passes the settings dict on (itself, or a value made from it such as
  `settings["data"]`), followed into the callee under the name its parameter has there (static: a call resolves through the module's own functions and
  its `from … import` names). Counted: calls, files, and *climbs back*: calls into a
  module of a higher layer than the caller's (layers: docs/architecture.md's order, read
  from `.importlinter` where it exists, else by the module graph's depth).
* **module graph**: top-level units (modules and packages of `segfungi`), import levels
  (longest import chain), imports that go up those levels, and cycles (strongly connected
  components of more than one unit, at top level and inside each package).
* **largest modules** by lines, and the count of modules over 400 lines.
"""

from __future__ import annotations

import ast
import configparser
import sys
from collections import defaultdict
from pathlib import Path


def module_files(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted((root / "segfungi").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def resolve_from(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class Module:
    """One module's functions and the names it imports."""

    def __init__(self, name: str, path: Path, modules: dict[str, Path]):
        self.name, self.path = name, path
        self.tree = ast.parse(path.read_text())
        self.functions: dict[str, ast.FunctionDef] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions.setdefault(node.name, node)
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        self.functions.setdefault(f"{node.name}.{item.name}", item)
        self.imports: dict[str, tuple[str, str | None]] = {}  # local name -> (module, attribute or None)
        is_package = path.name == "__init__.py"
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom):
                source = resolve_from(name, node, is_package)
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    local = alias.asname or alias.name
                    self.imports[local] = (full, None) if full in modules else (source, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.imports[alias.asname] = (alias.name, None)


def uses(node: ast.AST, name: str) -> bool:
    """Whether an argument is the settings or made from them (`settings["data"]`, `{**settings, …}`)."""
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


def settings_path(root: Path, start: tuple[str, str], param: str = "settings") -> dict:
    files = module_files(root)
    cache: dict[str, Module] = {}

    def module(name: str) -> Module | None:
        if name not in files:
            return None
        if name not in cache:
            cache[name] = Module(name, files[name], files)
        return cache[name]

    def target(mod: Module, call: ast.Call) -> tuple[str, str] | None:
        func = call.func
        if isinstance(func, ast.Name):
            if func.id in mod.functions:
                return mod.name, func.id
            if func.id in mod.imports:
                source, attr = mod.imports[func.id]
                if attr is not None:
                    return _reexported(source, attr)
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            owner = func.value.id
            if owner in mod.imports and mod.imports[owner][1] is None:
                return _reexported(mod.imports[owner][0], func.attr)
            if owner in mod.imports:  # a class imported by name: Class.method
                source, attr = mod.imports[owner]
                found = _reexported(source, attr)
                if found:
                    return found[0], f"{found[1]}.{func.attr}"
            if owner in ("cls", "self"):
                return None
        return None

    def _reexported(source: str, attr: str, depth: int = 0) -> tuple[str, str] | None:
        mod = module(source)
        if mod is None or depth > 5:
            return None
        if attr in mod.functions or any(k.startswith(f"{attr}.") for k in mod.functions):
            return source, attr if attr in mod.functions else f"{attr}.__init__"
        if attr in mod.imports and mod.imports[attr][1] is not None:
            return _reexported(*mod.imports[attr], depth + 1)
        lazy = _lazy_table(mod)
        if attr in lazy:
            return _reexported(lazy[attr], attr, depth + 1)
        return None

    def _lazy_table(mod: Module) -> dict[str, str]:
        """A package's `_PUBLIC`-style {name: module} table of lazy exports, resolved."""
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                table = {}
                for key, value in zip(node.value.keys, node.value.values):
                    if isinstance(key, ast.Constant) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                        target_module = value.value
                        if target_module.startswith("."):
                            target_module = mod.name + target_module
                        table[key.value] = target_module
                if table and all(v.startswith("segfungi") for v in table.values()):
                    return table
        return {}

    seen_functions, calls = set(), []
    todo = [(start, param)]
    while todo:
        (name, func_name), local = todo.pop()
        if (name, func_name, local) in seen_functions:
            continue
        seen_functions.add((name, func_name, local))
        mod = module(name)
        if mod is None or func_name not in mod.functions:
            continue
        func = mod.functions[func_name]
        for call in ast.walk(func):
            if not isinstance(call, ast.Call):
                continue
            where = None
            for i, arg in enumerate(call.args):
                if uses(arg, local):
                    where = ("pos", i)
            for kw in call.keywords:
                if kw.arg and uses(kw.value, local):
                    where = ("kw", kw.arg)
            if where is None:
                continue
            found = target(mod, call)
            if found is None:
                continue
            calls.append(((name, func_name), found))
            callee = module(found[0])
            node = callee.functions.get(found[1]) if callee else None
            if node is None:
                continue
            params = [a.arg for a in node.args.posonlyargs + node.args.args]
            if params and params[0] in ("self", "cls"):
                params = params[1:]
            new = where[1] if where[0] == "kw" else (params[where[1]] if where[1] < len(params) else None)
            if new:
                todo.append((found, new))
    return {"calls": calls, "files": {files[c[0]] for c, _ in calls} | {files[t[0]] for _, t in calls if t[0] in files}}


def top_unit(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def import_graph(root: Path) -> dict[str, set[str]]:
    files = module_files(root)
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in files.items():
        mod = Module(name, path, files)
        graph[name]
        for source, attr in mod.imports.values():
            full = f"{source}.{attr}" if attr and f"{source}.{attr}" in files else source
            if full.startswith("segfungi") and full != name and full in files:
                graph[name].add(full)
    return graph


def units_graph(graph: dict[str, set[str]], unit) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for a, targets in graph.items():
        out[unit(a)]
        for b in targets:
            if unit(a) != unit(b):
                out[unit(a)].add(unit(b))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def layer_order(root: Path, units: dict[str, set[str]]) -> dict[str, int]:
    """Each top-level unit's layer, 0 = top: from .importlinter when it exists, else the
    depth in the unit graph (longest chain of imports below it, counted from the bottom)."""
    linter = root / ".importlinter"
    if linter.exists():
        config = configparser.ConfigParser()
        config.read(linter)
        section = config["importlinter:contract:layers"]
        order = {}
        for depth, line in enumerate(section["layers"].strip().splitlines()):
            for name in line.split("|"):
                order[f"segfungi.{name.strip()}"] = depth
        return order
    height: dict[str, int] = {}

    def h(v, trail=()):
        if v in height:
            return height[v]
        if v in trail:
            return 0
        height[v] = 1 + max((h(w, trail + (v,)) for w in units.get(v, ())), default=-1)
        return height[v]

    top = max(h(v) for v in units)
    return {v: top - h(v) for v in units}


def levels_and_up(units: dict[str, set[str]]) -> tuple[int, int]:
    """(levels, imports up): levels by longest chain ignoring back edges of a DFS; an import
    is 'up' when it points to a unit of a higher level than its own (a back edge)."""
    state, back, order = {}, 0, []

    def dfs(v):
        nonlocal back
        state[v] = 1
        for w in sorted(units.get(v, ())):
            if state.get(w) == 1:
                back += 1
            elif w not in state:
                dfs(w)
        state[v] = 2
        order.append(v)

    for v in sorted(units):
        if v not in state:
            dfs(v)
    depth = {}
    for v in order:  # children first
        depth[v] = 1 + max((depth[w] for w in units.get(v, ()) if w in depth and w != v), default=0)
    return max(depth.values()), back


def report(root: Path) -> None:
    files = module_files(root)
    graph = import_graph(root)
    units = units_graph(graph, top_unit)
    layers = layer_order(root, units)

    def layer(module: str) -> int | None:
        return layers.get(top_unit(module))

    for label, candidates in (("build_bank", [("segfungi.api", "build_bank"), ("segfungi.bank._build", "build_bank")]),
                              ("run_benchmark", [("segfungi.experiments.benchmark._run", "run_benchmark"),
                                                 ("segfungi.benchmark._run", "run_benchmark")])):
        start = next((c for c in candidates if c[0] in files), None)
        if start is None:
            print(f"settings path from {label}: not found")
            continue
        path = settings_path(root, start)
        climbs = [(a, b) for a, b in path["calls"]
                  if layer(a[0]) is not None and layer(b[0]) is not None and layer(b[0]) < layer(a[0])]
        print(f"settings path from {start[0]}:{start[1]}: {len(path['calls'])} calls, {len(path['files'])} files, "
              f"{len(climbs)} climbs back")
        for a, b in climbs:
            print(f"    climbs: {a[0]}:{a[1]} -> {b[0]}:{b[1]}")
    levels, up = levels_and_up(units)
    top_cycles = cycles(units)
    package_cycles = []
    for package in {top_unit(m) for m in files if m.count(".") >= 2}:
        inner = {m: {t for t in ts if t.startswith(package + ".")} for m, ts in graph.items() if m.startswith(package + ".")}
        package_cycles += cycles(units_graph(inner, lambda m, p=package: ".".join(m.split(".")[: p.count(".") + 2])))
    module_cycles = cycles(graph)
    print(f"top-level units: {len([u for u in units if u != 'segfungi'])} "
          f"({sum(1 for u in units if u in files and files[u].name != '__init__.py')} modules at the root)")
    print(f"import levels: {levels}; imports up the levels: {up}")
    print(f"cycles: {len(top_cycles)} between top-level units, {len(package_cycles)} inside packages, "
          f"{len(module_cycles)} between modules")
    for c in top_cycles + package_cycles:
        print("    cycle:", " <-> ".join(c))
    sizes = sorted(((len(p.read_text().splitlines()), m) for m, p in files.items()), reverse=True)
    print("largest modules:", ", ".join(f"{m} {n}" for n, m in sizes[:6]))
    print(f"modules over 400 lines: {sum(1 for n, _ in sizes if n > 400)} of {len(sizes)}")


if __name__ == "__main__":
    report(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent))
