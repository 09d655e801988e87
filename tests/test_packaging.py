"""
The twistd plugin must show up on a fresh machine, both for the editable
install the README's ``make`` commands use and for a plain ``pip install``.

Each case builds a brand-new virtualenv.  To keep the suite fast and
offline the dependencies are borrowed from the running test environment
through a ``.pth`` file, and only vmqtw itself is installed, with
``--no-deps``; the plugin lookup is what is under test.
"""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh_venv(path):
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    borrowed = [p for p in site.getsitepackages() if os.path.isdir(p)]
    with open(os.path.join(purelib, "borrowed-test-deps.pth"), "w") as handle:
        handle.write("\n".join(borrowed) + "\n")
    return path / "bin"


def _copy_of_repo(destination):
    shutil.copytree(REPO, destination, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", "build", "data", ".hypothesis",
        ".pytest_cache", "dropin.cache"))
    return destination


@pytest.mark.parametrize("editable", [True, False], ids=["make-install", "pip-install"])
def test_twistd_lists_vmqtw_after_install(tmp_path, editable):
    bin_dir = _fresh_venv(tmp_path / "venv")
    source = _copy_of_repo(tmp_path / "src")
    command = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
               "--no-build-isolation", "--no-index"]
    if editable:
        # Exactly what the Makefile does (minus the dependencies).
        command += ["-e", str(source), "--config-settings", "editable_mode=compat"]
    else:
        command += [str(source)]
    subprocess.run(command, check=True, timeout=300, cwd=str(tmp_path))
    # Run from elsewhere so that the checkout on the cwd cannot help.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # twistd itself is borrowed (with Twisted) from the test environment.
    result = subprocess.run([str(bin_dir / "python"), "-c",
                             "from twisted.scripts.twistd import run; run()", "--help"],
                            cwd=str(elsewhere),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    commands = [line.split()[0] for line in result.stdout.splitlines()
                if line.startswith("    ") and line.split()]
    assert "vmqtw" in commands, result.stdout
