"""What `make build` (sam build: arm64, python3.12, no Docker) produced is what Lambda can run.

The local cloud imports ``tuneplane`` from the dev venv, so these tests read the BUILT artifacts in ``.aws-sam/build/``
instead: the handlers' code directories, the built layer's ``python/`` (the package and its dependencies) and the
built template. CI runs `make build` before `make test`; without a build the tests skip. The checker lives in
``tests/e2e/build_artifacts.py``; the second half of this module runs it on doctored copies of the build to show that
each kind of packaging mistake is reported.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from local.cfn_yaml import load_cfn_yaml
from tests.e2e.build_artifacts import (
    BUILD_DIR,
    FIRST_PARTY,
    ROOT,
    SOURCE_PACKAGE,
    Build,
    check_binaries,
    check_build,
    check_functions,
    check_imports,
    check_layer_binaries,
    check_layer_package,
    closure_modules_importing,
    import_closure,
    load_build,
    package_files,
)

# What the tests of the checker compare a doctored copy with: the real build's package.
BUILT_PACKAGE = BUILD_DIR / "SharedLayer" / "python" / FIRST_PARTY

pytestmark = pytest.mark.skipif(not (BUILD_DIR / "template.yaml").exists(), reason="run `make build` first")

# Third-party modules that only the workstation command `tuneplane stage-model` needs (tuneplane.adapters.model_hub
# says so): they are not in the layer's requirements. huggingface_hub is in the built layer anyway, as a dependency
# of tokenizers, and at another version than the dev venv's, so "present in the layer" does not make a handler that
# reaches them safe: no handler may import them at all.
WORKSTATION_ONLY = frozenset({"huggingface_hub", "httpx"})


@pytest.fixture(scope="module")
def build() -> Build:
    return load_build(BUILD_DIR)


# ---------------------------------------------------------------------------------------------------------------------
# The real build


def test_every_function_of_the_template_was_built_with_its_handler(build: Build) -> None:
    # GIVEN the source template's functions
    source = load_cfn_yaml(ROOT / "template.yaml")["Resources"]
    expected = {name for name, resource in source.items() if resource["Type"] == "AWS::Serverless::Function"}
    # WHEN the built template is read
    # THEN it has the same functions, each pointing at a built directory whose module defines its handler
    assert {function.logical_id for function in build.functions} == expected
    assert check_functions(build) == []


def test_built_layer_holds_exactly_the_source_package(build: Build) -> None:
    # GIVEN the layers that the functions use
    used = {layer_id for function in build.functions for layer_id in function.layers}
    assert used, "no function references a layer built here"
    for layer_id in sorted(used):
        layer = build.layers[layer_id]
        # WHEN its python/tuneplane/ is compared with layers/shared/tuneplane/, byte for byte
        findings = check_layer_package(layer, SOURCE_PACKAGE)
        # THEN nothing is missing, extra or different (modules, data files), and there is no bytecode
        assert findings == [], "\n".join([*findings, "(a build older than the sources? run `make build`)"])
        # AND the comparison covered the package's data files, not only modules
        built = package_files(layer.python_dir / FIRST_PARTY, skip_bytecode=False)
        assert any(not name.endswith(".py") for name in built), sorted(built)


def test_every_third_party_import_of_a_handler_is_in_its_layer_or_runtime(build: Build) -> None:
    # GIVEN each built handler WHEN its imports are followed through the built tuneplane modules
    findings = check_imports(build)
    # THEN every third-party module reached is in the layer's python/ or shipped by the python3.12 runtime
    assert findings == [], "\n".join(findings)
    # AND the closure really went through the layer: each handler reached tuneplane modules
    for function in build.functions:
        reached = import_closure(function, build.layers).reached
        assert any(name.startswith(f"{FIRST_PARTY}.") for name in reached), (function.logical_id, sorted(reached))


def test_no_handler_reaches_a_workstation_only_module(build: Build) -> None:
    # GIVEN the modules that only the stage-model command needs, which are imported somewhere in the built package
    layer_modules = "\n".join(
        path.read_text(encoding="utf-8")
        for layer in build.layers.values()
        for path in (layer.python_dir / FIRST_PARTY).rglob("*.py")
    )
    for top in WORKSTATION_ONLY:
        assert f"import {top}" in layer_modules or f"from {top}" in layer_modules, f"{top}: stale WORKSTATION_ONLY"
    # WHEN each handler's import closure is searched for them
    hits = {f.logical_id: closure_modules_importing(f, build.layers, WORKSTATION_ONLY) for f in build.functions}
    # THEN no handler can import them
    assert {name: found for name, found in hits.items() if found} == {}


def test_compiled_dependencies_are_for_arm64_and_python_3_12(build: Build) -> None:
    # GIVEN the functions' runtime and architecture (what the layer must have been built for)
    assert {(f.runtime, f.architecture) for f in build.functions} == {("python3.12", "arm64")}
    # WHEN every shared object, extension filename tag and wheel tag of the layers is checked
    findings = check_layer_binaries(build)
    # THEN all are aarch64 / cp312 (or abi3, pure Python) and fit Amazon Linux 2023's glibc
    assert findings == [], "\n".join(findings)


# ---------------------------------------------------------------------------------------------------------------------
# The checker on doctored copies of the build


@pytest.fixture
def doctored(tmp_path: Path) -> Path:
    """A copy of the build that a test may break: the template, the function directories and each layer's
    ``python/tuneplane/`` are copied; the layers' other entries (numpy, pydantic, ...: large) are symlinks to the
    real build, so a test removes a dependency by unlinking its symlink and never writes through one."""
    copy = tmp_path / "build"
    copy.mkdir()
    shutil.copy2(BUILD_DIR / "template.yaml", copy / "template.yaml")
    real = load_build(BUILD_DIR)
    for function in real.functions:
        shutil.copytree(function.code_dir, copy / function.code_dir.relative_to(BUILD_DIR), dirs_exist_ok=True)
    for layer in real.layers.values():
        python = copy / layer.python_dir.relative_to(BUILD_DIR)
        python.mkdir(parents=True)
        for entry in layer.python_dir.iterdir():
            if entry.name == FIRST_PARTY:
                shutil.copytree(entry, python / entry.name)
            else:
                (python / entry.name).symlink_to(entry)
    return copy


@pytest.fixture
def edit(doctored: Path) -> Callable[[str, Callable[[str], str]], Path]:
    """edit(relative path in the doctored build, text -> text): rewrite one copied file."""

    def apply(relative: str, change: Callable[[str], str]) -> Path:
        path = doctored / relative
        assert not path.is_symlink() and path.is_file(), relative
        path.write_text(change(path.read_text(encoding="utf-8")), encoding="utf-8")
        return path

    return apply


def test_doctored_copy_is_clean_before_it_is_broken(doctored: Path) -> None:
    # GIVEN an untouched copy WHEN it is checked THEN the checker finds nothing (the copies are compared with the real
    # build's package, not the sources, so that these tests hold while someone edits a module without rebuilding)
    assert check_build(doctored, BUILT_PACKAGE) == []


def test_module_left_out_of_the_layer_is_reported(doctored: Path) -> None:
    # GIVEN a build whose layer lost tuneplane/logic/cost.py (which the validate stage imports)
    (doctored / "SharedLayer/python/tuneplane/logic/cost.py").unlink()
    # WHEN it is checked
    findings = check_build(doctored, BUILT_PACKAGE)
    # THEN the layer comparison names the file
    assert "SharedLayer: python/tuneplane/logic/cost.py is missing (in the source package)" in findings
    # AND the import closure says which handler's import breaks, and where
    broken = [f for f in findings if f.startswith("ValidateFunction:") and "'tuneplane.logic.cost'" in f]
    assert broken and "SharedLayer/python/tuneplane/logic/validation_engine.py:" in broken[0], findings


def test_data_file_left_out_or_changed_is_reported(doctored: Path) -> None:
    # GIVEN a build without the bundled pricing table and with an edited module
    (doctored / "SharedLayer/python/tuneplane/data/instances.json").unlink()
    (doctored / "SharedLayer/python/tuneplane/errors.py").write_text("# stale\n", encoding="utf-8")
    # AND bytecode that should not be there
    (doctored / "SharedLayer/python/tuneplane/__pycache__").mkdir()
    (doctored / "SharedLayer/python/tuneplane/__pycache__/errors.cpython-312.pyc").write_bytes(b"\0")
    # WHEN the layer is compared with the package it was built from
    findings = check_layer_package(load_build(doctored).layers["SharedLayer"], BUILT_PACKAGE)
    # THEN each problem is reported
    assert findings == [
        "SharedLayer: python/tuneplane/data/instances.json is missing (in the source package)",
        "SharedLayer: python/tuneplane/__pycache__/errors.cpython-312.pyc is not in the source package",
        "SharedLayer: python/tuneplane/errors.py differs from the source package's",
        "SharedLayer: python/tuneplane/__pycache__ is a __pycache__ directory",
    ]


def test_dependency_missing_from_the_layer_is_reported_with_its_import_chain(doctored: Path) -> None:
    # GIVEN a layer built without orjson (as if it had left layers/shared/requirements.txt)
    (doctored / "SharedLayer/python/orjson").unlink()
    # WHEN the handlers' imports are checked
    findings = check_imports(load_build(doctored))
    # THEN the validate handler, the only one that reaches orjson, is reported with the chain down to the import
    scanner = "SharedLayer/python/tuneplane/logic/validation/scanner.py"
    assert len(findings) == 1, findings
    assert findings[0].startswith("ValidateFunction: 'orjson' is neither in its layers' python/ nor provided by")
    assert findings[0].endswith(f"{scanner}:{_line_of(doctored / scanner, 'import orjson')}"), findings
    assert "imported via ValidateFunction/app.py:" in findings[0], findings


def test_import_inside_a_function_counts_and_type_checking_imports_do_not(
    doctored: Path, edit: Callable[[str, Callable[[str], str]], Path]
) -> None:
    # GIVEN a handler that imports a dev-venv-only package inside a function, another one only for type checking
    handler = edit("StageFunction/app.py", lambda text: text + "\n\ndef _debug() -> None:\n    import moto\n")
    edit(
        "SharedLayer/python/tuneplane/observability.py",
        lambda text: text + "\nimport typing\n\nif typing.TYPE_CHECKING:\n    import pytest\nelse:\n    import json\n",
    )
    # WHEN the imports are checked
    findings = check_imports(load_build(doctored))
    # THEN the function-level import is reported, the TYPE_CHECKING one (pytest is not in the layer either) is not
    assert [f.split(" is neither")[0] for f in findings] == ["StageFunction: 'moto'"], findings
    assert findings[0].endswith(f"StageFunction/app.py:{_line_of(handler, '    import moto')}"), findings


def test_module_imported_by_name_from_its_package_is_followed(
    doctored: Path, edit: Callable[[str, Callable[[str], str]], Path]
) -> None:
    # GIVEN a dev-venv-only import in tuneplane.adapters.slack, which is reached only as
    # `from tuneplane.adapters import s3, secrets, slack` (a module imported by name, not a name the package defines)
    slack = edit(
        "SharedLayer/python/tuneplane/adapters/slack.py",
        lambda text: text + "\n\ndef _extra() -> None:\n    import moto\n",
    )
    # WHEN the imports are checked
    findings = check_imports(load_build(doctored))
    # THEN the notify handler is reported, with the package import in the chain and the line of the import
    assert len(findings) == 1, findings
    assert findings[0].startswith("NotifyFunction: 'moto' is neither"), findings
    # (notify.py and alarms.py both import it as `from tuneplane.adapters import secrets, slack`)
    chain = findings[0]
    assert any(f"SharedLayer/python/tuneplane/logic/notify/{name}.py:" in chain for name in ("notify", "alarms"))
    assert findings[0].endswith(f"SharedLayer/python/tuneplane/adapters/slack.py:{_line_of(slack, '    import moto')}")


def test_handler_reaching_the_hub_adapter_is_reported(
    build: Build, doctored: Path, edit: Callable[[str, Callable[[str], str]], Path]
) -> None:
    # GIVEN a deploy handler that imports the stage-model command's hub adapter
    edit(
        "DeployFunction/app.py",
        lambda text: text.replace("\nfrom tuneplane", "\nfrom tuneplane.adapters import model_hub\nfrom tuneplane", 1),
    )
    doctored_build = load_build(doctored)
    deploy = next(f for f in doctored_build.functions if f.logical_id == "DeployFunction")
    # WHEN its closure is searched for the workstation-only modules
    hits = closure_modules_importing(deploy, doctored_build.layers, WORKSTATION_ONLY)
    # THEN the adapter is named with its chain and the modules it imports
    assert list(hits.values()) == [{"huggingface_hub", "httpx"}]
    assert next(iter(hits)).startswith("tuneplane.adapters.model_hub (via DeployFunction/app.py:")
    # AND the presence check catches httpx, which the layer lacks (huggingface_hub 2.x there uses httpx2)
    findings = check_imports(doctored_build)
    assert [f.split(" is neither")[0] for f in findings] == ["DeployFunction: 'httpx'"], findings


def test_unknown_name_and_missing_handler_are_reported(
    doctored: Path, edit: Callable[[str, Callable[[str], str]], Path]
) -> None:
    # GIVEN a handler that imports a name its module does not define, and a handler module renamed away
    notify = edit(
        "NotifyFunction/app.py", lambda text: text.replace("import notify_settings", "import notify_settingz")
    )
    (doctored / "StartRunFunction/app.py").rename(doctored / "StartRunFunction/main.py")
    build = load_build(doctored)
    # WHEN the build is checked
    functions, imports = check_functions(build), check_imports(build)
    # THEN both are reported
    assert any(f.startswith("StartRunFunction (Handler 'app.handler'): no module 'app'") for f in functions), functions
    line = _line_of(notify, "from tuneplane.config import")
    expected = f"NotifyFunction: NotifyFunction/app.py:{line}: cannot import 'notify_settingz' from 'tuneplane.config'"
    assert any(f.startswith(expected) for f in imports), imports


def _line_of(path: Path, text: str) -> int:
    """1-based number of the first line of ``path`` that starts with ``text``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(number for number, line in enumerate(lines, 1) if line.startswith(text))


def _elf_header(machine: int) -> bytes:
    """The first 20 bytes of a 64-bit little-endian ELF shared object (ET_DYN) for ``machine``."""
    return b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + (3).to_bytes(2, "little") + machine.to_bytes(2, "little")


def test_extensions_for_the_build_machine_are_reported(doctored: Path) -> None:
    # GIVEN a layer where pip fell back to the build machine's wheels: an x86_64 CPython 3.11 extension, an x86_64
    # abi3 one (whose name has no machine), and the wheel metadata of such a fallback
    python = doctored / "SharedLayer/python"
    (python / "fast.cpython-311-x86_64-linux-gnu.so").write_bytes(_elf_header(62) + bytes(64))
    (python / "speedy.abi3.so").write_bytes(_elf_header(62) + bytes(64))
    (python / "fast-1.0.dist-info").mkdir()
    (python / "fast-1.0.dist-info/WHEEL").write_text("Wheel-Version: 1.0\nTag: cp311-cp311-manylinux_2_17_x86_64\n")
    (python / "musly-1.0.dist-info").mkdir()
    (python / "musly-1.0.dist-info/WHEEL").write_text("Wheel-Version: 1.0\nTag: cp312-cp312-musllinux_1_2_aarch64\n")
    # WHEN the layer's binaries are checked for python3.12 on arm64
    findings = check_binaries(load_build(doctored).layers["SharedLayer"], "python3.12", "arm64")
    # THEN each is reported
    prefix = "SharedLayer (for python3.12/arm64): python/"
    assert findings == [
        f"{prefix}fast.cpython-311-x86_64-linux-gnu.so is a 64-bit ELF for x86_64, not aarch64",
        f"{prefix}fast.cpython-311-x86_64-linux-gnu.so is tagged cpython-311-x86_64-linux-gnu,"
        " not cpython-312-aarch64-linux-gnu",
        f"{prefix}speedy.abi3.so is a 64-bit ELF for x86_64, not aarch64",
        f"{prefix}fast-1.0.dist-info was installed from a wheel tagged cp311-cp311-manylinux_2_17_x86_64",
        f"{prefix}musly-1.0.dist-info was installed from a wheel tagged cp312-cp312-musllinux_1_2_aarch64",
    ]
    # AND the real extensions, checked the same way against x86_64, would all be reported (the check reads them)
    real = check_binaries(load_build(BUILD_DIR).layers["SharedLayer"], "python3.12", "x86_64")
    assert any("not x86_64" in f for f in real) and any("manylinux" in f for f in real), real
