"""Move the service's import paths under the one `unlearnd` namespace (issue 15, item 6).

The repository keeps its top-level folders (api/, core/, worker/, cli/, migrations/); pyproject.toml's
package-dir installs them as `unlearnd.api`, `unlearnd.core`, ... This script rewrites the code that names
them by their old top-level paths:

- Python imports: `from core.x import y` → `from unlearnd.core.x import y`; `import core.x` →
  `import unlearnd.core.x` and, where that import binds the name `core`, every use of that name in its scope
  (`core.x.f()` → `unlearnd.core.x.f()`); a scope that also binds the name otherwise is reported, not guessed.
- Module paths inside Python string literals (not docstrings, not f-string expressions): "api.app:app",
  mock.patch("worker.runner.f"), [sys.executable, "-m", "cli.main"], "import api.app, sys; ...". Only a
  package followed by one of its real submodules counts (`worker.log` is a file name, not a module).
- Command lines in the deployment and documentation files (Dockerfile, docker-compose.yml, Makefile, .ci/*.sh,
  *.md, alembic.ini, *.mako): `uvicorn api.app:app`, `celery -A worker.celery_app`, `python -m cli.main`,
  `import api.app` and `from core.x import y` lines. Prose that merely mentions a module is left alone.

It is deterministic and idempotent (a rewritten path starts with `unlearnd.`, which no rule matches again), so
it can be re-run after merging newer commits that still use the old paths:

    python tools/namespace_rewrite.py            # rewrite in place, then `ruff check --fix` + `ruff format`
    python tools/namespace_rewrite.py --check    # exit 1 and list the files that still need it

A file with "namespace-rewrite: skip" in its first five lines is left alone (tests/test_namespace_rewrite.py).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "unlearnd"
PACKAGES = ("api", "core", "worker", "cli", "migrations")
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".cache", ".ruff_cache", ".pytest_cache", "build", "dist"}
SELF = Path(__file__).resolve()
SKIP_MARK = "namespace-rewrite: skip"  # in a file's first lines: leave it alone (this tool's own test cases)
TEXT_NAMES = {"Dockerfile", "docker-compose.yml", "Makefile", "alembic.ini"}
TEXT_SUFFIXES = {".md", ".sh", ".mako"}


class RewriteError(Exception):
    pass


# ---------------------------------------------------------------- what counts as one of our module paths


def submodules(root: Path = ROOT) -> dict[str, list[str]]:
    """Each package's immediate submodules and subpackages, from the tree (sorted: deterministic)."""
    found: dict[str, list[str]] = {}
    for pkg in PACKAGES:
        names: set[str] = set()
        base = root / pkg
        if base.is_dir():
            for child in base.iterdir():
                if child.suffix == ".py" and child.stem != "__init__":
                    names.add(child.stem)
                elif child.is_dir() and child.name.isidentifier() and any(child.glob("*.py")):
                    names.add(child.name)
        found[pkg] = sorted(names)
    return found


def module_path_re(subs: dict[str, list[str]]) -> re.Pattern[str]:
    """`pkg.sub` where sub is a real submodule of pkg, not itself part of a longer dotted name or a path."""
    alts = "|".join(rf"{pkg}\.(?:{'|'.join(map(re.escape, names))})" for pkg, names in sorted(subs.items()) if names)
    return re.compile(rf"(?<![\w.{{/\\-])(?:{alts})(?![\w-])")


# ---------------------------------------------------------------- Python files


class _Scopes(ast.NodeVisitor):
    """Which names each scope binds, and how: "pkg" (a plain `import core.x`) or "other" (anything else)."""

    def __init__(self) -> None:
        self.bindings: dict[int, dict[str, set[str]]] = {}
        self.kinds: dict[int, bool] = {}  # scope id → is a class body
        self.loads: list[tuple[ast.Name, tuple[int, ...]]] = []
        self.chain: list[int] = []

    def _push(self, node: ast.AST, is_class: bool = False) -> None:
        self.chain.append(id(node))
        self.bindings.setdefault(id(node), {})
        self.kinds[id(node)] = is_class

    def _bind(self, name: str, kind: str) -> None:
        self.bindings[self.chain[-1]].setdefault(name, set()).add(kind)

    def visit_Module(self, node: ast.Module) -> None:
        self._push(node)
        self.generic_visit(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        if not isinstance(node, ast.Lambda):
            self._bind(node.name, "other")
            for d in node.decorator_list:
                self.visit(d)
            if node.returns:
                self.visit(node.returns)
        args = node.args
        for default in [*args.defaults, *[d for d in args.kw_defaults if d is not None]]:
            self.visit(default)
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if a is not None and a.annotation is not None:
                self.visit(a.annotation)
        self._push(node)
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if a is not None:
                self._bind(a.arg, "other")
        for stmt in node.body if isinstance(node.body, list) else [node.body]:
            self.visit(stmt)
        self.chain.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._bind(node.name, "other")
        for n in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(n)
        self._push(node, is_class=True)
        for stmt in node.body:
            self.visit(stmt)
        self.chain.pop()

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp) -> None:
        self.visit(node.generators[0].iter)  # evaluated in the enclosing scope
        self._push(node)
        for i, gen in enumerate(node.generators):
            self.visit(gen.target)
            if i:
                self.visit(gen.iter)
            for cond in gen.ifs:
                self.visit(cond)
        for part in ("elt", "key", "value"):
            if hasattr(node, part):
                self.visit(getattr(node, part))
        self.chain.pop()

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self._bind(alias.asname, "other")
            else:
                top = alias.name.split(".")[0]
                self._bind(top, "pkg" if top in PACKAGES else "other")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self._bind(alias.asname or alias.name, "other")

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.loads.append((node, tuple(self.chain)))
        else:
            self._bind(node.id, "other")

    def visit_arg(self, node: ast.arg) -> None:  # only reached for lambda-less odd places; bind defensively
        self._bind(node.arg, "other")

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self._bind(node.name, "other")
        self.generic_visit(node)

    def _declare(self, node: ast.Global | ast.Nonlocal) -> None:
        for name in node.names:
            if name in PACKAGES:
                raise RewriteError(f"line {node.lineno}: `{type(node).__name__.lower()} {name}`: rewrite by hand")

    visit_Global = visit_Nonlocal = _declare

    def resolve(self, node: ast.Name, chain: tuple[int, ...]) -> str | None:
        """The kind of the binding a load of node.id sees (Python's rule: class bodies do not enclose)."""
        for depth, scope in enumerate(reversed(chain)):
            if depth and self.kinds[scope]:
                continue
            kinds = self.bindings[scope].get(node.id)
            if kinds:
                if kinds == {"pkg"}:
                    return "pkg"
                if "pkg" in kinds:
                    raise RewriteError(
                        f"line {node.lineno}: `{node.id}` is both an imported package and another name in one scope"
                    )
                return "other"
        return None


def _line_offsets(data: bytes) -> list[int]:
    offsets = [0]
    for i, b in enumerate(data):
        if b == 0x0A:
            offsets.append(i + 1)
    return offsets


def _docstring_ids(tree: ast.AST) -> set[int]:
    """Bare string statements (docstrings and the like): prose, left alone."""
    return {
        id(n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant | ast.JoinedStr)
    }


def _mask_fstring_fields(segment: str) -> str:
    """Blank out the {expressions} of an f-string's source so that only its literal text is rewritten."""
    out, depth, i = [], 0, 0
    while i < len(segment):
        c = segment[i]
        if depth == 0 and c in "{}" and segment[i : i + 2] in ("{{", "}}"):
            out.append("  ")
            i += 2
            continue
        if c == "{":
            depth += 1
        if depth:
            out.append("\0" if c != "\n" else c)
        else:
            out.append(c)
        if c == "}" and depth:
            depth -= 1
        i += 1
    return "".join(out)


def rewrite_python(source: str, path_re: re.Pattern[str]) -> str:
    data = source.encode()
    tree = ast.parse(data)
    starts = _line_offsets(data)

    def at(lineno: int, col: int) -> int:
        return starts[lineno - 1] + col

    edits: list[tuple[int, int, bytes]] = []  # (start, end, replacement), byte offsets

    def insert_prefix(pos: int, expected: str, lineno: int) -> None:
        if not data.startswith(expected.encode(), pos):
            raise RewriteError(f"line {lineno}: expected {expected!r} at column {pos - starts[lineno - 1]}")
        edits.append((pos, pos, f"{PREFIX}.".encode()))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    insert_prefix(at(alias.lineno, alias.col_offset), alias.name.split(".")[0], alias.lineno)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in PACKAGES:
                start = at(node.lineno, node.col_offset)
                m = re.compile(rb"from\s+").match(data, start)
                if not m:
                    raise RewriteError(f"line {node.lineno}: cannot find the module of this import")
                insert_prefix(m.end(), node.module.split(".")[0], node.lineno)

    scopes = _Scopes()
    scopes.visit(tree)
    for name, chain in scopes.loads:
        if name.id in PACKAGES and scopes.resolve(name, chain) == "pkg":
            insert_prefix(at(name.lineno, name.col_offset), name.id, name.lineno)

    prose = _docstring_ids(tree)
    fstring_parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    fstring_parts |= {id(n.format_spec) for n in ast.walk(tree) if isinstance(n, ast.FormattedValue) and n.format_spec}
    for node in ast.walk(tree):
        literal = isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in fstring_parts
        if not (literal or isinstance(node, ast.JoinedStr)) or id(node) in prose:
            continue
        start, end = at(node.lineno, node.col_offset), at(node.end_lineno, node.end_col_offset)
        segment = data[start:end].decode()
        scanned = _mask_fstring_fields(segment) if isinstance(node, ast.JoinedStr) else segment
        for m in path_re.finditer(scanned):
            pos = start + len(segment[: m.start()].encode())
            edits.append((pos, pos, f"{PREFIX}.".encode()))

    if not edits:
        return source
    out, last = [], 0
    for start, end, repl in sorted(set(edits)):
        if start < last:
            raise RewriteError(f"overlapping edits at byte {start}")
        out += [data[last:start], repl]
        last = end
    out.append(data[last:])
    return b"".join(out).decode()


# ---------------------------------------------------------------- deployment and documentation files


def text_rules() -> list[tuple[re.Pattern[str], str]]:
    pkgs = "|".join(PACKAGES)
    mod = rf"(?:{pkgs})(?:\.\w+)*"
    return [
        (re.compile(rf"(\buvicorn\s+(?:--\S+\s+)*)({mod}:\w+)"), rf"\1{PREFIX}.\2"),  # uvicorn api.app:app
        (re.compile(rf"(\bcelery\s+(?:-A\s*|--app[=\s]+))({mod})\b"), rf"\1{PREFIX}.\2"),  # celery -A worker.x
        (re.compile(rf"((?:^|\s)-m\s+)({mod})\b", re.M), rf"\1{PREFIX}.\2"),  # python -m cli.main
        (re.compile(rf"(\bimport\s+)((?:{pkgs})\.\w+(?:\.\w+)*)"), rf"\1{PREFIX}.\2"),  # import api.app (dotted)
        (re.compile(rf"^(\s*from\s+)({mod})(\s+import\b)", re.M), rf"\1{PREFIX}.\2\3"),  # from core.x import y
        (re.compile(rf"^(\s*import\s+)({pkgs})(\s*$)", re.M), rf"\1{PREFIX}.\2\3"),  # a lone `import core` line
    ]


def rewrite_text(text: str) -> str:
    for pattern, repl in text_rules():
        text = pattern.sub(repl, text)
    return text


# ---------------------------------------------------------------- driver


def candidate_files(root: Path = ROOT) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.resolve() == SELF:
                continue
            if path.suffix == ".py" or name in TEXT_NAMES or path.suffix in TEXT_SUFFIXES:
                files.append(path)
    return files


def rewrite_file(path: Path, path_re: re.Pattern[str]) -> str | None:
    """The file's new text, or None when it needs no change."""
    text = path.read_text(encoding="utf-8")
    if SKIP_MARK in "\n".join(text.splitlines()[:5]):
        return None
    try:
        new = rewrite_python(text, path_re) if path.suffix == ".py" else rewrite_text(text)
    except (RewriteError, SyntaxError) as e:
        raise RewriteError(f"{path.relative_to(ROOT)}: {e}") from None
    return new if new != text else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any file needs rewriting")
    parser.add_argument("--no-ruff", action="store_true", help="skip `ruff check --fix` + `ruff format` afterwards")
    args = parser.parse_args(argv)

    path_re = module_path_re(submodules())
    changed, errors = [], []
    for path in candidate_files():
        try:
            new = rewrite_file(path, path_re)
        except RewriteError as e:
            errors.append(str(e))
            continue
        if new is not None:
            changed.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for path in changed:
        print(f"{'needs rewrite' if args.check else 'rewrote'}: {path.relative_to(ROOT)}")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if args.check:
        return 1 if changed or errors else 0
    py = [str(p) for p in changed if p.suffix == ".py"]
    if py and not args.no_ruff:
        ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
        if ruff is None:
            print("ruff not found: run `ruff check --fix . && ruff format .` yourself", file=sys.stderr)
        else:
            # Import order changes (unlearnd.* sorts as one block) and longer lines need re-wrapping.
            subprocess.run(
                [ruff, "check", "--fix", "--select", "I", "--force-exclude", "--quiet", *py], cwd=ROOT, check=False
            )
            subprocess.run([ruff, "format", "--force-exclude", "--quiet", *py], cwd=ROOT, check=False)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
