"""The pipe as the one file OpenWebUI takes: its modules inlined in reading order, the server's URL filled in.

`pipe.py` and its siblings are a normal package (imported and tested as such); OpenWebUI instead `exec`s one
file's text. Rendering keeps each module's code verbatim, drops the imports between siblings, gathers the
other imports at the top, and checks the result: it compiles, starts with the frontmatter, imports only what
OpenWebUI ships, and contains none of the text OpenWebUI rewrites blindly before it runs a function
(`from utils` and the like, which OpenWebUI's loader turns into `from open_webui.utils`).
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
MODULES = ("pipe", "turn", "render", "history", "transport")  # the order the file reads in: Pipe first
THIRD_PARTY = {"httpx", "pydantic"}  # what OpenWebUI already has, besides the standard library
REWRITTEN = ("from utils", "from config", "from main", "from apps")  # replaced anywhere by OpenWebUI's loader
FRONTMATTER_KEYS = ("title", "author", "version", "description")
URL_LINE = re.compile(r'^LOOM_URL = "[^"\n]*"', re.M)
FRONTMATTER_LINE = re.compile(r"^\s*([a-z_]+):\s*(.*?)\s*$", re.I)  # what OpenWebUI's parser reads


class PipeRenderError(ValueError):
    pass


def render_pipe(url: str) -> str:
    """The single-file pipe with `url` as the default of its Loom URL valve. Raises PipeRenderError."""
    url = _checked_url(url)
    header, imports, sections, defined = "", _Imports(), [], {}
    for name in MODULES:
        source = (HERE / f"{name}.py").read_text()
        tree = ast.parse(source)
        lines = source.splitlines(keepends=True)
        dropped: set[int] = set()
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                dropped.update(range(node.lineno - 1, node.end_lineno))
                if not (isinstance(node, ast.ImportFrom) and node.level):  # a sibling's names: inlined below
                    imports.add(node)
            else:
                for defined_name in _defined(node):
                    if defined_name in defined:
                        raise PipeRenderError(f"{defined_name} is defined in both {defined[defined_name]}.py and "
                                              f"{name}.py: one file has one namespace")
                    defined[defined_name] = name
        docstring = ast.get_docstring(tree, clean=False)
        first_code = next(n for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom)) and
                          not (docstring and n is tree.body[0]))
        if name == "pipe":
            # The frontmatter docstring and the comments under it open the file; the imports follow them.
            start = min(n.lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))) - 1
            header = "".join(lines[:start])
        else:
            start = first_code.lineno - 1
            while start > 0 and lines[start - 1].lstrip().startswith(("#", "@")):
                start -= 1
            banner = f"# {'-' * (110 - len(name))} {name}.py\n"
            sections.append(banner + "".join(f"# {line}".rstrip() + "\n" for line in docstring.strip().splitlines())
                            + "\n\n")
        sections.append("".join(line for i, line in enumerate(lines[start:], start) if i not in dropped) + "\n\n")
    clash = set(defined) & imports.names()
    if clash:
        raise PipeRenderError(f"imported names also defined in the pipe: {', '.join(sorted(clash))}")
    text = header + imports.render() + "\n" + "".join(sections).lstrip("\n")
    text = re.sub(r"\n{4,}", "\n\n\n", text).rstrip() + "\n"
    text, count = URL_LINE.subn(f"LOOM_URL = {json.dumps(url)}", text)
    if count != 1:
        raise PipeRenderError("pipe.py must assign LOOM_URL exactly once")
    problems = check_pipe(text)
    if problems:
        raise PipeRenderError("; ".join(problems))
    return text


def check_pipe(source: str) -> list[str]:
    """What keeps `source` from loading in OpenWebUI 0.12 as this pipe; [] when nothing does."""
    problems = []
    lines = source.splitlines()
    if not lines or lines[0] != '"""':
        problems.append('the first line must be exactly """ (OpenWebUI reads the frontmatter only then)')
    else:
        end = next((i for i, line in enumerate(lines[1:], 1) if '"""' in line), len(lines))
        keys = {m.group(1) for line in lines[1:end] if (m := FRONTMATTER_LINE.match(line))}
        if missing := [k for k in FRONTMATTER_KEYS if k not in keys]:
            problems.append(f"the frontmatter lacks {', '.join(missing)}")
    problems += [f"contains {text!r}, which OpenWebUI rewrites" for text in REWRITTEN if text in source]
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [*problems, f"does not compile: {exc}"]
    if not any(isinstance(n, ast.ClassDef) and n.name == "Pipe" for n in tree.body):
        problems.append("defines no Pipe class")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            problems.append(f"line {node.lineno}: a relative import is left")
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        for module in modules:
            top = module.split(".")[0]
            if top not in sys.stdlib_module_names and top not in THIRD_PARTY:
                problems.append(f"line {node.lineno}: imports {module}, which OpenWebUI does not ship")
    return problems


def _checked_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or re.search(r'[\s"\'\\]', url):
        raise PipeRenderError(f"not an http(s) URL of a loom server: {url!r}")
    return url


def _defined(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
        node, (ast.AnnAssign, ast.AugAssign)) else []
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


class _Imports:
    """The modules' imports, merged: `import x` and `from x import a, b`, standard library first."""

    def __init__(self) -> None:
        self.plain: set[str] = set()
        self.from_: dict[str, set[str]] = {}

    def add(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            self.plain.update(a.name if a.asname is None else f"{a.name} as {a.asname}" for a in node.names)
        elif node.module != "__future__":
            self.from_.setdefault(node.module, set()).update(
                a.name if a.asname is None else f"{a.name} as {a.asname}" for a in node.names)

    def names(self) -> set[str]:
        every = [*self.plain, *(n for names in self.from_.values() for n in names)]
        return {n.split(" as ")[-1].split(".")[0] for n in every}

    def render(self) -> str:
        groups: dict[bool, list[tuple[str, str]]] = {True: [], False: []}
        for module in self.plain:
            groups[module.split(".")[0] in THIRD_PARTY].append((module, f"import {module}"))
        for module, names in self.from_.items():
            groups[module.split(".")[0] in THIRD_PARTY].append(
                (module, f"from {module} import {', '.join(sorted(names))}"))
        blocks = ["\n".join(line for _, line in sorted(group, key=lambda item: (item[1].startswith("from"),
                                                                                 item[0])))
                  for group in (groups[False], groups[True]) if group]
        return "\n\n".join(blocks) + "\n"
