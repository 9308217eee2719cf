"""CI cannot skip: under CI=true a test skipped for a missing optional package fails the run
(tests/conftest.py), other skips stay skips, and the skip count is printed at the end."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hostile import tally

CASES, _report = tally("ci skips")
TESTS = Path(__file__).resolve().parent

SAMPLE = {
    "test_module_level.py": """
        import pytest
        pytest.importorskip("clipviz_no_such_package_a")

        def test_never_collected():
            pass
        """,
    "test_inside.py": """
        import pytest

        def test_needs_a_package():
            pytest.importorskip("clipviz_no_such_package_b")

        @pytest.fixture
        def library():
            return pytest.importorskip("clipviz_no_such_package_c")

        def test_needs_a_package_through_a_fixture(library):
            pass

        def test_skipped_for_another_reason():
            pytest.skip("needs a GPU")

        def test_plain():
            assert 1 + 1 == 2
        """,
}


def run_sample(tmp_path, ci):
    for name, text in SAMPLE.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent)])
    # our conftest as a plugin; -c /dev/null: no ini file, so nothing else is collected
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-c", os.devnull, "-q",
                             "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    return result.returncode, result.stdout


OUTSIDE_CI = ["1 passed, 4 skipped", "skipped: 4 (3 for a missing optional package)"]
# under CI the test fails, the fixture's setup errors, the GPU skip stays a skip, the module is named
UNDER_CI = ["1 failed, 1 passed, 2 skipped, 1 error", "FAILED test_inside.py::test_needs_a_package ",
            "ERROR test_inside.py::test_needs_a_package_through_a_fixture", "clipviz_no_such_package_b",
            "clipviz_no_such_package_c", "module skipped for a missing optional package: test_module_level.py",
            "skipped: 2 (1 for a missing optional package)"]


@pytest.mark.parametrize("ci, exit_code, lines", [(None, 0, OUTSIDE_CI), ("false", 0, OUTSIDE_CI),
                                                  ("true", 1, UNDER_CI)])
def test_a_skip_for_a_missing_package_fails_the_run_only_under_ci(tmp_path, ci, exit_code, lines):
    with CASES.case():
        code, out = run_sample(tmp_path, ci)
        assert code == exit_code, out
        assert all(line in out for line in lines), out


def test_under_ci_only_the_module_level_skip_still_fails_the_run(tmp_path):
    """A run whose sole problem is a module skipped at import still exits non-zero."""
    with CASES.case():
        inside = SAMPLE.pop("test_inside.py")
        try:
            code, out = run_sample(tmp_path, "true")
        finally:
            SAMPLE["test_inside.py"] = inside
        assert code == 1, out
        assert "module skipped for a missing optional package: test_module_level.py" in out


def test_ci_script_installs_extras_with_their_dependencies():
    """Only open_clip_torch and timm (both declare torchvision) go in with --no-deps, and every extra
    the adapter tests import is named."""
    with CASES.case():
        script = (TESTS.parent / ".ci" / "run").read_text()
        no_deps = [line for line in script.splitlines() if "--no-deps" in line and not line.lstrip().startswith("#")]
        assert no_deps == ["python3 -m pip install -q --no-deps -r .ci/no-deps.txt"]
        listed = lambda name: [line.split("==")[0] for line in (TESTS.parent / ".ci" / name).read_text().splitlines()
                               if line and not line.startswith("#")]
        assert listed("no-deps.txt") == ["open_clip_torch", "timm"]
        assert {"transformers", "huggingface_hub", "ftfy", "regex", "tqdm", "safetensors", "pyyaml"} <= set(listed("extras.txt"))
        assert 'export CI="${CI:-true}"' in script
