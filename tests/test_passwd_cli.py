"""
Tests for the ``vmqtw-passwd`` tool (mosquitto_passwd compatible), run in-process
through ``main([...])`` with tmp files, plus one real run as a subprocess.
"""
from __future__ import annotations

import io
import os
import stat
import subprocess
import sys

import pytest

from vmqtw.auth.passwd import PasswordFile
from vmqtw.auth.passwd_cli import main

FAST = ["-I", "20"]


def run(argv, answers=None):
    """Run main() with scripted getpass answers; return (status, stderr)."""
    prompts = []
    queue = list(answers or [])

    def getpass(prompt):
        prompts.append(prompt)
        if not queue:
            raise EOFError
        return queue.pop(0)

    err = io.StringIO()
    status = main(list(argv), getpass=getpass, stderr=err)
    return status, err.getvalue(), prompts


def load(path):
    return PasswordFile.load(str(path))


def test_create_batch_and_check(tmp_path):
    path = tmp_path / "pw"
    status, err, prompts = run(FAST + ["-c", "-b", str(path), "alice", "s3cret"])
    assert (status, err, prompts) == (0, "", [])
    pw = load(path)
    assert list(pw.users()) == ["alice"]
    assert pw.check("alice", "s3cret") and not pw.check("alice", "other")
    assert path.read_text().startswith("alice:$7$20$")


def test_file_mode_is_0600_even_when_it_was_wider(tmp_path):
    path = tmp_path / "pw"
    path.write_text("")
    os.chmod(path, 0o644)
    assert run(FAST + ["-b", str(path), "u", "p"])[0] == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_default_iterations_are_used_without_I(tmp_path):
    path = tmp_path / "pw"
    assert run(["-c", "-b", str(path), "u", "p"])[0] == 0
    assert path.read_text().startswith("u:$7$210000$")


def test_prompt_twice(tmp_path):
    path = tmp_path / "pw"
    status, err, prompts = run(FAST + ["-c", str(path), "bob"], ["pw1", "pw1"])
    assert status == 0 and len(prompts) == 2
    assert load(path).check("bob", "pw1")


def test_prompt_mismatch_is_an_error_and_writes_nothing(tmp_path):
    path = tmp_path / "pw"
    status, err, _ = run(FAST + ["-c", str(path), "bob"], ["pw1", "pw2"])
    assert status != 0
    assert err.count("\n") == 1 and "match" in err
    assert not path.exists()


def test_add_update_keeps_other_lines(tmp_path):
    path = tmp_path / "pw"
    run(FAST + ["-c", "-b", str(path), "alice", "a1"])
    with open(path, "a") as f:
        f.write("# keep this comment\n\nsomething malformed\n")
    assert run(FAST + ["-b", str(path), "bob", "b1"])[0] == 0
    assert run(FAST + ["-b", str(path), "alice", "a2"])[0] == 0
    text = path.read_text()
    assert "# keep this comment\n" in text and "something malformed\n" in text
    lines = text.splitlines()
    assert lines[0].startswith("alice:")       # updated in place
    assert lines[-1].startswith("bob:")
    pw = load(path)
    assert sorted(pw.users()) == ["alice", "bob"]
    assert pw.check("alice", "a2") and not pw.check("alice", "a1")
    assert pw.check("bob", "b1")


def test_create_overwrites(tmp_path):
    path = tmp_path / "pw"
    run(FAST + ["-c", "-b", str(path), "alice", "a"])
    run(FAST + ["-c", "-b", str(path), "bob", "b"])
    assert list(load(path).users()) == ["bob"]


def test_delete(tmp_path):
    path = tmp_path / "pw"
    run(FAST + ["-c", "-b", str(path), "alice", "a"])
    run(FAST + ["-b", str(path), "bob", "b"])
    assert run(["-D", str(path), "alice"])[0] == 0
    pw = load(path)
    assert list(pw.users()) == ["bob"] and pw.check("bob", "b")


@pytest.mark.parametrize("argv,words", [
    (["-b", "{path}", "alice", "p"], "does not exist"),                 # missing file without -c
    (["-D", "{path}", "alice"], "does not exist"),
    (["-D", "{existing}", "nobody"], "not in"),                         # unknown user
    (["-c", "-b", "{path}", "al:ice", "p"], "':'"),
    (["-c", "-b", "{path}", "", "p"], "empty"),
    (["-c", "-b", "{path}", "#root", "p"], "'#'"),
    (["-c", "-b", "{path}", "a\nb", "p"], "control"),
    (["-c", "-b", "{path}", "alice"], "password argument"),
    (["-c", "{path}", "alice", "p"], "only accepted with -b"),
    (["-c", "-b", "{path}", "alice", ""], "empty"),
    (["-c", "-D", "{path}", "alice"], "not allowed"),
    (["-D", "-b", "{existing}", "u", "p"], "cannot be combined"),
    (["-I", "0", "-c", "-b", "{path}", "alice", "p"], "positive"),
    (["-c"], "required"),
])
def test_errors_are_one_sentence_and_nonzero(tmp_path, argv, words):
    path = tmp_path / "pw"
    existing = tmp_path / "existing"
    existing.write_text("u:$7$1$AAAA$AAAA\n")
    before = existing.read_text()
    argv = [a.format(path=path, existing=existing) for a in argv]
    status, err, _ = run(argv)
    assert status != 0
    assert err.startswith("vmqtw-passwd: ") and err.endswith(".\n")
    assert err.count("\n") == 1
    assert words in err
    assert not path.exists()
    assert existing.read_text() == before


def test_no_temporary_files_left_behind(tmp_path):
    path = tmp_path / "pw"
    run(FAST + ["-c", "-b", str(path), "a", "p"])
    run(FAST + ["-b", str(path), "b", "p"])
    run(["-D", str(path), "a"])
    assert os.listdir(tmp_path) == ["pw"]


def test_console_script_module_runs_as_a_process(tmp_path):
    """The real entry point: ``python -m vmqtw.auth.passwd_cli`` (what the
    vmqtw-passwd console script calls)."""
    path = tmp_path / "pw"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    ok = subprocess.run(
        [sys.executable, "-m", "vmqtw.auth.passwd_cli", "-I", "20", "-c", "-b", str(path),
         "alice", "pw"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env=env, cwd=str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert load(path).check("alice", "pw")
    bad = subprocess.run(
        [sys.executable, "-m", "vmqtw.auth.passwd_cli", "-D", str(path), "nobody"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env=env, cwd=str(tmp_path))
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("vmqtw-passwd: User nobody is not in")
