"""Checks of what `sam build` produced (`.aws-sam/build/`), not of the sources.

Why: in the local cloud the handlers import ``tuneplane`` from the dev venv (an editable install of
``layers/shared/``), so a packaging mistake never shows there: a module or data file that the layer build leaves out,
a third-party import missing from ``layers/shared/requirements.txt``, a handler importing something only the dev venv
has, or wheels for the build machine (x86_64, CPython 3.11) instead of the functions' arm64/python3.12. Each check
reads the built template and the built directories and returns findings (strings that say what is wrong and where);
an empty list means the build passed. Every check takes the build directory as an argument, so the tests of the
checker itself run it on a doctored copy.

What the checks rely on:
- AWS docs (Lambda, "Packaging your layer content"): a layer is extracted under /opt and, for Python, its ``python/``
  folder (and ``python/lib/python3.x/site-packages``) is on the import path, so a built layer's ``python/`` is what a
  handler can import besides its own code directory (/var/task, first on the path) and the runtime.
- AWS docs (Lambda, "Working with .zip file archives for Python Lambda functions", runtime dependencies): "The Lambda
  Python runtimes include the AWS SDK for Python (Boto3) and its dependencies". Those dependencies are boto3's and
  botocore's install requirements: botocore, s3transfer, jmespath, python-dateutil (module ``dateutil``, which needs
  ``six``) and urllib3; hence ``RUNTIME_PROVIDED``. The same page warns that a package shipping SDK dependencies
  next to the runtime's Boto3 can cause version misalignment.
- AWS docs (Lambda runtimes): python3.12 runs on Amazon Linux 2023, whose glibc is 2.34: a ``manylinux_2_X`` wheel
  needs X <= 34 there.
- The standard library is ``sys.stdlib_module_names`` of the runtime's Python; when the tests run on 3.11 the 3.12
  set is derived from it with the changes listed in "What's New In Python 3.12" (asynchat, asyncore, distutils, imp
  and smtpd removed; the private renames were read off CPython 3.12.1's own ``sys.stdlib_module_names``).
"""

from __future__ import annotations

import ast
import re
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.cfn_yaml import load_cfn_yaml

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = ROOT / ".aws-sam" / "build"
SOURCE_PACKAGE = ROOT / "layers" / "shared" / "tuneplane"
FIRST_PARTY = "tuneplane"

# boto3 and its dependencies, which the Lambda Python runtimes ship (see the module docstring).
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six"})

# "What's New In Python 3.12": removed modules (plus private ones renamed) and the new private ones.
_REMOVED_IN_312 = frozenset(
    {"asynchat", "asyncore", "distutils", "imp", "smtpd", "_bootsubprocess", "_sha256", "_sha512"}
)
_ADDED_IN_312 = frozenset({"_pydatetime", "_pylong", "_sha2"})

# Lambda architecture -> (ELF e_machine, the machine in wheel and extension tags). EM_AARCH64 = 183, EM_X86_64 = 62.
_ARCHITECTURES = {"arm64": (183, "aarch64"), "x86_64": (62, "x86_64")}
_ELF_MACHINE_NAMES = {183: "aarch64", 62: "x86_64", 3: "i386", 40: "arm"}
# Amazon Linux 2023 (python3.12 and later runtimes) has glibc 2.34.
_RUNTIME_GLIBC = {"python3.12": (2, 34), "python3.13": (2, 34)}

_EXTENSION_TAG = re.compile(r"\.cpython-(?P<version>\d+)[a-z]*-(?P<platform>[a-z0-9_]+)-linux-(?P<libc>gnu|musl)\.so$")
_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_")
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


# ---------------------------------------------------------------------------------------------------------------------
# The built template


@dataclass(frozen=True)
class BuiltLayer:
    logical_id: str
    content_dir: Path
    build_method: str | None
    build_architecture: str | None

    @property
    def python_dir(self) -> Path:
        return self.content_dir / "python"


@dataclass(frozen=True)
class BuiltFunction:
    logical_id: str
    code_dir: Path
    handler: str
    runtime: str
    architecture: str
    layers: tuple[str, ...]  # logical IDs of the layers it references with Ref

    @property
    def handler_module(self) -> str:
        return self.handler.rsplit(".", 1)[0]

    @property
    def handler_function(self) -> str:
        return self.handler.rsplit(".", 1)[-1]


@dataclass
class Build:
    directory: Path
    functions: list[BuiltFunction]
    layers: dict[str, BuiltLayer]
    findings: list[str]  # what made a function or layer unreadable from the template


def load_build(build_dir: Path) -> Build:
    """The functions and layers of ``build_dir/template.yaml`` with their effective runtime and architecture.

    SAM Globals apply to every function (its own properties win; Layers add up, the AWS SAM docs say lists are
    additive). A CodeUri/ContentUri of the built template is relative to the template's directory."""
    template: dict[str, Any] = load_cfn_yaml(build_dir / "template.yaml")
    resources: Mapping[str, Any] = template.get("Resources", {})
    function_globals: Mapping[str, Any] = (template.get("Globals") or {}).get("Function", {})
    build = Build(build_dir, [], {}, [])
    for logical_id, resource in resources.items():
        properties = resource.get("Properties") or {}
        if resource.get("Type") == "AWS::Serverless::LayerVersion":
            content = _local_dir(build_dir, properties.get("ContentUri"))
            if content is None:
                build.findings.append(f"{logical_id}: ContentUri {properties.get('ContentUri')!r} is not a built dir")
                continue
            metadata = resource.get("Metadata") or {}
            build.layers[logical_id] = BuiltLayer(
                logical_id, content, metadata.get("BuildMethod"), metadata.get("BuildArchitecture")
            )
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        properties = {**function_globals, **(resource.get("Properties") or {})}
        code = _local_dir(build_dir, properties.get("CodeUri"))
        if code is None:
            build.findings.append(f"{logical_id}: CodeUri {properties.get('CodeUri')!r} is not a built dir")
            continue
        layer_ids: list[str] = []
        for layer in [*function_globals.get("Layers", []), *(resource.get("Properties") or {}).get("Layers", [])]:
            if isinstance(layer, dict) and isinstance(layer.get("Ref"), str) and layer["Ref"] in build.layers:
                layer_ids.append(layer["Ref"])
            else:
                build.findings.append(
                    f"{logical_id}: layer {layer!r} is not a layer built here; its content is unchecked"
                )
        architectures = properties.get("Architectures") or ["x86_64"]  # Lambda's default architecture
        build.functions.append(
            BuiltFunction(
                logical_id,
                code,
                str(properties.get("Handler", "")),
                str(properties.get("Runtime", "")),
                str(architectures[0]),
                tuple(layer_ids),
            )
        )
    return build


def _local_dir(build_dir: Path, uri: Any) -> Path | None:
    if not isinstance(uri, str) or uri.startswith("s3://"):
        return None
    return build_dir / uri


# ---------------------------------------------------------------------------------------------------------------------
# 1. Functions point at their handler; the layer holds exactly the source package


def check_functions(build: Build) -> list[str]:
    """Each function's built code directory exists and defines its handler at module level."""
    findings = list(build.findings)
    if not build.functions:
        findings.append(f"{build.directory / 'template.yaml'}: no AWS::Serverless::Function")
    for function in build.functions:
        where = f"{function.logical_id} (Handler {function.handler!r})"
        if not function.code_dir.is_dir():
            findings.append(f"{where}: code directory {function.code_dir} does not exist")
            continue
        path = _module_file(function.handler_module, [function.code_dir])
        if path is None or path.is_dir():
            findings.append(f"{where}: no module {function.handler_module!r} in {function.code_dir}")
            continue
        tree = ast.parse(path.read_bytes(), filename=str(path))
        if function.handler_function not in _defined_names(tree):
            findings.append(f"{where}: {path} defines no {function.handler_function!r} at module level")
    return findings


def package_files(root: Path, *, skip_bytecode: bool) -> dict[str, bytes]:
    """Relative POSIX path -> bytes of every file under ``root``; ``skip_bytecode`` leaves out ``__pycache__``
    and ``*.pyc`` (the dev tree's, which the SAM python builder does not copy)."""
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if skip_bytecode and ("__pycache__" in relative.parts or path.suffix == ".pyc"):
            continue
        if path.is_file():
            files[relative.as_posix()] = path.read_bytes()
    return files


def check_layer_package(layer: BuiltLayer, source_package: Path = SOURCE_PACKAGE) -> list[str]:
    """The built ``python/tuneplane/`` holds exactly the source package's files, byte for byte, data files included,
    and no bytecode (the SAM python builder's CopySource skips names such as ``env``, ``.cache``, ``*.so`` and
    ``*.egg``, so a file of the package with such a name silently disappears from the layer)."""
    built_root = layer.python_dir / source_package.name
    if not built_root.is_dir():
        return [f"{layer.logical_id}: no {built_root.relative_to(layer.content_dir)}/ in {layer.content_dir}"]
    source = package_files(source_package, skip_bytecode=True)
    built = package_files(built_root, skip_bytecode=False)
    prefix = f"{layer.logical_id}: python/{source_package.name}/"
    findings = [f"{prefix}{name} is missing (in the source package)" for name in sorted(source.keys() - built.keys())]
    findings += [f"{prefix}{name} is not in the source package" for name in sorted(built.keys() - source.keys())]
    findings += [
        f"{prefix}{name} differs from the source package's"
        for name in sorted(source.keys() & built.keys())
        if source[name] != built[name]
    ]
    findings += [
        f"{prefix}{path.relative_to(built_root).as_posix()} is a __pycache__ directory"
        for path in sorted(built_root.rglob("__pycache__"))
    ]
    return findings


# ---------------------------------------------------------------------------------------------------------------------
# 2. The import closure of each handler


@dataclass(frozen=True)
class ImportSite:
    """One import statement: ``names`` are the ``from`` names (empty for ``import x``)."""

    module: str  # absolute dotted name imported (relative imports resolved)
    names: tuple[str, ...]
    line: int


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_branches(node: ast.If) -> list[ast.stmt]:
    """The statements of an ``if`` that run: an ``if TYPE_CHECKING:`` body never does (typing.TYPE_CHECKING is
    False at run time), nor does the ``else`` of ``if not TYPE_CHECKING:``."""
    if _is_type_checking(node.test):
        return node.orelse
    if (
        isinstance(node.test, ast.UnaryOp)
        and isinstance(node.test.op, ast.Not)
        and _is_type_checking(node.test.operand)
    ):
        return node.body
    return [*node.body, *node.orelse]


class _ImportCollector(ast.NodeVisitor):
    """Every import a module can run: module level and inside functions, classes, try/except, loops (anything that
    may execute), but not under ``if TYPE_CHECKING:``. Also ``importlib.import_module("x")``, ``__import__("x")``
    and ``importlib.resources.files("x")`` with a literal name."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.sites: list[ImportSite] = []

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        for statement in _runtime_branches(node):
            self.visit(statement)

    def visit_Import(self, node: ast.Import) -> None:
        self.sites += [ImportSite(alias.name, (), node.lineno) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".") if self.package else []
            base = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        self.sites.append(ImportSite(module, tuple(alias.name for alias in node.names), node.lineno))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        dynamic = name in ("import_module", "__import__") or (
            name == "files" and isinstance(func, ast.Attribute) and "resources" in ast.unparse(func.value)
        )
        if dynamic and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            self.sites.append(ImportSite(node.args[0].value, (), node.lineno))
        self.generic_visit(node)


def _bound_names(statement: ast.stmt) -> set[str]:
    """The names one statement binds in its own scope (``"*"`` for a star import)."""
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {statement.name}
    if isinstance(statement, ast.Import | ast.ImportFrom):
        return {alias.asname or alias.name.split(".")[0] for alias in statement.names}
    targets: list[ast.expr] = []
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, ast.AnnAssign | ast.AugAssign | ast.For | ast.AsyncFor):
        targets = [statement.target]
    return {node.id for target in targets for node in ast.walk(target) if isinstance(node, ast.Name)}


def _nested_statements(statement: ast.stmt) -> list[ast.stmt]:
    """The statements of the blocks of ``statement`` that run in the same scope (not a def's or class's body)."""
    if isinstance(statement, ast.If):
        return _runtime_branches(statement)
    if isinstance(statement, ast.Try | ast.TryStar):
        return [
            *statement.body,
            *statement.orelse,
            *statement.finalbody,
            *(s for h in statement.handlers for s in h.body),
        ]
    if isinstance(statement, ast.For | ast.AsyncFor | ast.While):
        return [*statement.body, *statement.orelse]
    if isinstance(statement, ast.With | ast.AsyncWith):
        return statement.body
    return []


def _defined_names(tree: ast.Module) -> set[str]:
    """Names a module binds at module level when it runs (not under TYPE_CHECKING); ``"*"`` when it may bind any
    (a star import or a module ``__getattr__``)."""
    names: set[str] = set()
    pending = list(tree.body)
    while pending:
        statement = pending.pop()
        names |= _bound_names(statement)
        pending += _nested_statements(statement)
    if "__getattr__" in names:
        names.add("*")
    return names


def _module_file(name: str, roots: Iterable[Path]) -> Path | None:
    """Where ``name`` is found on a path made of ``roots`` (first match): ``a/b.py``, ``a/b/__init__.py``, or the
    directory of a namespace package."""
    parts = name.split(".")
    namespace: Path | None = None
    for root in roots:
        base = root.joinpath(*parts)
        if base.with_suffix(".py").is_file():
            return base.with_suffix(".py")
        if (base / "__init__.py").is_file():
            return base / "__init__.py"
        if base.is_dir() and namespace is None:
            namespace = base
    return namespace


def _top_level_present(name: str, directory: Path) -> bool:
    """A top-level module ``name`` importable from ``directory``: a package or namespace dir, a module file or a
    compiled extension (``name.cpython-312-aarch64-linux-gnu.so``, ``name.abi3.so``, ``name.so``)."""
    return (
        (directory / name).is_dir()
        or (directory / f"{name}.py").is_file()
        or any(path.is_file() for path in directory.glob(f"{name}.*.so"))
        or (directory / f"{name}.so").is_file()
    )


@dataclass(frozen=True)
class Reached:
    """A module in a handler's import closure and the chain of imports that reached it, for the report."""

    name: str
    path: Path
    chain: tuple[str, ...]  # "file:line" of each import from the handler down to this module


def stdlib_modules(runtime: str) -> frozenset[str]:
    """The top-level standard library modules of a Lambda Python runtime ("python3.12")."""
    running = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if runtime == running:
        return frozenset(sys.stdlib_module_names)
    if runtime == "python3.12" and running == "python3.11":
        return frozenset(sys.stdlib_module_names - _REMOVED_IN_312 | _ADDED_IN_312)
    raise ValueError(f"cannot tell the standard library of {runtime} from {running}")


@dataclass
class Closure:
    reached: dict[str, Reached]  # first-party and handler modules followed
    third_party: dict[str, tuple[str, ...]]  # top-level name -> chain of the first import of it
    findings: list[str]


def import_closure(function: BuiltFunction, layers: Mapping[str, BuiltLayer]) -> Closure:
    """Follow every import from the built handler through the modules of the function's code directory and the built
    ``tuneplane``; collect the third-party top-level modules reached and the imports that cannot work."""
    code_roots = [function.code_dir]
    roots = [*code_roots, *(layers[layer_id].python_dir for layer_id in function.layers)]
    ours = {FIRST_PARTY} | {path.stem if path.is_file() else path.name for path in function.code_dir.iterdir()}
    closure = Closure({}, {}, [])
    start = _module_file(function.handler_module, code_roots)
    if start is None or start.is_dir():
        closure.findings.append(f"{function.logical_id}: no handler module {function.handler_module!r}")
        return closure
    queue: deque[Reached] = deque([Reached(function.handler_module, start, ())])
    closure.reached[function.handler_module] = queue[0]
    while queue:
        current = queue.popleft()
        for site in module_imports(current):  # nothing for a namespace package's directory
            location = f"{_display(current.path, function.code_dir.parent)}:{site.line}"
            chain = (*current.chain, location)
            top = site.module.split(".")[0]
            if top not in ours:
                closure.third_party.setdefault(top, chain)
                continue
            for name, error in _resolve(site, roots):
                if error:
                    closure.findings.append(f"{function.logical_id}: {location}: {error} (via {' -> '.join(chain)})")
                elif name not in closure.reached:
                    path = _module_file(name, roots)
                    assert path is not None
                    closure.reached[name] = Reached(name, path, chain)
                    queue.append(closure.reached[name])
    return closure


def _resolve(site: ImportSite, roots: list[Path]) -> Iterator[tuple[str, str]]:
    """(module, "") for each module the import statement runs (the parent packages first), or ("", error) where
    Python would raise ImportError."""
    parts = site.module.split(".")
    for index in range(1, len(parts) + 1):
        name = ".".join(parts[:index])
        if _module_file(name, roots) is None:
            yield "", f"no module {name!r} in the build"
            return
        yield name, ""
    module_path = _module_file(site.module, roots)
    assert module_path is not None
    defined: set[str] | None = None
    for imported in site.names:
        if imported == "*":
            continue
        submodule = f"{site.module}.{imported}"
        if _module_file(submodule, roots) is not None:
            yield submodule, ""
            continue
        if defined is None:
            defined = set() if module_path.is_dir() else _defined_names(ast.parse(module_path.read_bytes()))
        if imported not in defined and "*" not in defined:
            yield "", f"cannot import {imported!r} from {site.module!r}: neither a module nor a name it defines"


def module_imports(reached: Reached) -> list[ImportSite]:
    """The imports that module can run (module level and in functions; not under TYPE_CHECKING)."""
    if reached.path.is_dir():
        return []
    collector = _ImportCollector(reached.name, reached.path.name == "__init__.py")
    collector.visit(ast.parse(reached.path.read_bytes(), filename=str(reached.path)))
    return collector.sites


def closure_modules_importing(
    function: BuiltFunction, layers: Mapping[str, BuiltLayer], tops: Iterable[str]
) -> dict[str, set[str]]:
    """ "module (via chain)" -> which of the top-level modules ``tops`` it imports, over the handler's closure."""
    wanted = set(tops)
    hits: dict[str, set[str]] = {}
    for reached in import_closure(function, layers).reached.values():
        found = {site.module.split(".")[0] for site in module_imports(reached)} & wanted
        if found:
            hits.setdefault(f"{reached.name} (via {' -> '.join(reached.chain)})", set()).update(found)
    return hits


def _display(path: Path, base: Path) -> str:
    """``path`` relative to the build directory (``ValidateFunction/app.py``, ``SharedLayer/python/...``)."""
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)


def check_imports(build: Build) -> list[str]:
    """Every third-party top-level module a handler can import is in one of its built layers' ``python/`` or is
    provided by its runtime (standard library, boto3 and its dependencies)."""
    findings: list[str] = []
    for function in build.functions:
        if not function.code_dir.is_dir():
            continue  # check_functions reports it
        closure = import_closure(function, build.layers)
        findings += closure.findings
        stdlib = stdlib_modules(function.runtime)
        for top, chain in sorted(closure.third_party.items()):
            if top in stdlib or top in RUNTIME_PROVIDED or top == "__future__":
                continue
            if any(_top_level_present(top, build.layers[layer_id].python_dir) for layer_id in function.layers):
                continue
            findings.append(
                f"{function.logical_id}: {top!r} is neither in its layers' python/ nor provided by the"
                f" {function.runtime} runtime; imported via {' -> '.join(chain)}"
            )
    return findings


# ---------------------------------------------------------------------------------------------------------------------
# 3. Compiled code is for the functions' architecture and Python


def _elf_machine(path: Path) -> tuple[int, int] | None:
    """(EI_CLASS, e_machine) of an ELF file, None if it is not one. e_machine is at offset 18 (ELF spec), in the byte
    order EI_DATA (offset 5) gives."""
    header = path.read_bytes()[:20]
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    return header[4], int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


def _wheel_tag_ok(tag: str, runtime: str, machine: str) -> bool:
    """One ``python-abi-platform`` tag that the runtime can load."""
    pythons, abis, platforms = tag.split("-")
    version = int(runtime.removeprefix("python").replace(".", ""))  # python3.12 -> 312
    glibc = _RUNTIME_GLIBC.get(runtime, (2, 34))
    for python in pythons.split("."):
        for abi in abis.split("."):
            for platform in platforms.split("."):
                if abi == "none":
                    ok_python = python.startswith("py3") or python in ("py", f"cp{version}")
                elif abi == "abi3":
                    ok_python = python.startswith("cp3") and int(python[2:]) <= version
                else:
                    ok_python = python == f"cp{version}" and abi == f"cp{version}"
                if ok_python and (platform == "any" or _platform_ok(platform, machine, glibc)):
                    return True
    return False


def _platform_ok(platform: str, machine: str, glibc: tuple[int, int]) -> bool:
    if not platform.endswith(f"_{machine}"):
        return False
    match = _MANYLINUX.match(platform)
    if match:
        return (int(match[1]), int(match[2])) <= glibc
    legacy = platform.removesuffix(f"_{machine}")
    if legacy == "linux":  # built from an sdist on a Linux machine (e.g. `sam build --use-container`): the ELF check
        return True  # of its shared objects tells whether that machine was the right one
    return legacy in _LEGACY_MANYLINUX and _LEGACY_MANYLINUX[legacy] <= glibc


def check_binaries(layer: BuiltLayer, runtime: str, architecture: str) -> list[str]:
    """Every shared object under the layer's ``python/`` is a 64-bit ELF for the functions' machine, every CPython
    extension's filename tag names the functions' Python and machine, and every installed wheel's tags fit the
    runtime (Python, machine, glibc; musllinux does not load on Amazon Linux)."""
    e_machine, machine = _ARCHITECTURES[architecture]
    version = runtime.removeprefix("python").replace(".", "")
    findings: list[str] = []
    prefix = f"{layer.logical_id} (for {runtime}/{architecture}): python/"
    if layer.build_method not in (None, runtime):
        findings.append(f"{layer.logical_id}: BuildMethod {layer.build_method} but its functions run {runtime}")
    if layer.build_architecture not in (None, architecture):
        findings.append(f"{layer.logical_id}: BuildArchitecture {layer.build_architecture}, functions {architecture}")
    shared_objects = [
        path
        for path in sorted(layer.python_dir.rglob("*"))
        if path.is_file() and (path.name.endswith(".so") or ".so." in path.name)
    ]
    for path in shared_objects:
        name = path.relative_to(layer.python_dir).as_posix()
        elf = _elf_machine(path)
        if elf is None:
            findings.append(f"{prefix}{name} is not an ELF file")
            continue
        elf_class, found = elf
        if elf_class != 2 or found != e_machine:
            bits = 64 if elf_class == 2 else 32
            findings.append(
                f"{prefix}{name} is a {bits}-bit ELF for {_ELF_MACHINE_NAMES.get(found, found)}, not {machine}"
            )
        tag = _EXTENSION_TAG.search(path.name)
        if tag and (tag["version"] != version or tag["platform"] != machine or tag["libc"] != "gnu"):
            findings.append(
                f"{prefix}{name} is tagged cpython-{tag['version']}-{tag['platform']}-linux-{tag['libc']},"
                f" not cpython-{version}-{machine}-linux-gnu"
            )
    for wheel in sorted(layer.python_dir.glob("*.dist-info/WHEEL")):
        tags = [line.split(":", 1)[1].strip() for line in wheel.read_text().splitlines() if line.startswith("Tag:")]
        if not any(_wheel_tag_ok(tag, runtime, machine) for tag in tags):
            findings.append(f"{prefix}{wheel.parent.name} was installed from a wheel tagged {', '.join(tags)}")
    return findings


def check_layer_binaries(build: Build) -> list[str]:
    """check_binaries for each layer and each (runtime, architecture) of the functions that use it."""
    findings: list[str] = []
    targets = sorted({(layer_id, f.runtime, f.architecture) for f in build.functions for layer_id in f.layers})
    for layer_id, runtime, architecture in targets:
        findings += check_binaries(build.layers[layer_id], runtime, architecture)
    return findings


def check_build(build_dir: Path, source_package: Path = SOURCE_PACKAGE) -> list[str]:
    """Every finding of every check on ``build_dir``."""
    build = load_build(build_dir)
    findings = check_functions(build)
    for layer in build.layers.values():
        findings += check_layer_package(layer, source_package)
    return findings + check_imports(build) + check_layer_binaries(build)
