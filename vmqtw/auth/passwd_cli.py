"""
``vmqtw-passwd``: manage a password file, compatible with ``mosquitto_passwd``.

    vmqtw-passwd [-c] [-I ITERATIONS] passwordfile username          # prompts twice
    vmqtw-passwd [-c] [-I ITERATIONS] -b passwordfile username password
    vmqtw-passwd -D passwordfile username

``-c`` creates (or overwrites) the file; without it the file must exist and the
user is added or updated in place, keeping every other line (comments too).
The file is replaced atomically (temporary file + rename) with mode 0600, so
the broker's reloader never sees half a file and other local users never see
the hashes.  Errors are one sentence on stderr and exit status 1.
"""
from __future__ import annotations

import argparse
import getpass as _getpass
import os
import sys
import tempfile
from typing import Callable, List, NoReturn, Optional, Sequence, TextIO

from vmqtw.auth.passwd import DEFAULT_ITERATIONS, hash_password, line_username

__all__ = ["main", "CliError"]


class CliError(Exception):
    """A user mistake: printed as one sentence, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(message[:1].upper() + message[1:] + ".")


def _parser() -> _Parser:
    p = _Parser(prog="vmqtw-passwd", description="Manage a vmqtw/mosquitto password file.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-c", dest="create", action="store_true",
                      help="create a new password file, overwriting an existing one")
    mode.add_argument("-D", dest="delete", action="store_true",
                      help="delete the user from the password file")
    p.add_argument("-b", dest="batch", action="store_true",
                   help="take the password from the command line (visible to other users!)")
    p.add_argument("-I", dest="iterations", type=int, default=DEFAULT_ITERATIONS,
                   help="PBKDF2 iterations (default %(default)s)")
    p.add_argument("passwordfile")
    p.add_argument("username")
    p.add_argument("password", nargs="?")
    return p


def _check_username(username: str) -> None:
    if not username:
        raise CliError("The username must not be empty.")
    if ":" in username:
        raise CliError("The username must not contain ':'.")
    if username != username.strip() or username.startswith("#"):
        raise CliError("The username must not start with '#' or start or end with white space.")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in username):
        raise CliError("The username must not contain control characters.")


def _ask_password(getpass: Callable[[str], str]) -> str:
    try:
        first = getpass("Password: ")
        second = getpass("Reenter password: ")
    except (EOFError, KeyboardInterrupt):
        raise CliError("No password was entered.") from None
    if first != second:
        raise CliError("The passwords do not match.")
    return first


def _read_lines(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise CliError("Password file {} does not exist (use -c to create it)."
                       .format(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise CliError("Cannot read password file {}: {}.".format(path, e)) from None


def _write_atomically(path: str, lines: Sequence[str]) -> None:
    target = os.path.realpath(path)
    directory = os.path.dirname(target) or "."
    fd, tmp = tempfile.mkstemp(prefix=".vmqtw-passwd-", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def run(args: argparse.Namespace, getpass: Callable[[str], str]) -> None:
    _check_username(args.username)
    if args.batch:
        if args.delete:
            raise CliError("-b and -D cannot be combined.")
        if args.password is None:
            raise CliError("Batch mode (-b) needs a password argument.")
    elif args.password is not None:
        raise CliError("A password argument is only accepted with -b.")
    if args.iterations < 1:
        raise CliError("The iteration count must be positive.")

    if args.delete:
        lines = _read_lines(args.passwordfile)
        kept = [line for line in lines if line_username(line) != args.username]
        if len(kept) == len(lines):
            raise CliError("User {} is not in {}.".format(args.username, args.passwordfile))
        _write_atomically(args.passwordfile, kept)
        return

    lines = [] if args.create else _read_lines(args.passwordfile)
    password = args.password if args.batch else _ask_password(getpass)
    if not password:
        raise CliError("The password must not be empty.")
    entry = "{}:{}".format(args.username, hash_password(password, args.iterations))
    out: List[str] = []
    replaced = False
    for line in lines:
        if line_username(line) == args.username:
            if not replaced:
                out.append(entry)
                replaced = True
            continue  # drop duplicates of the same user
        out.append(line)
    if not replaced:
        out.append(entry)
    try:
        _write_atomically(args.passwordfile, out)
    except OSError as e:
        raise CliError("Cannot write password file {}: {}.".format(args.passwordfile, e)) from None


def main(argv: Optional[Sequence[str]] = None, *,
         getpass: Callable[[str], str] = _getpass.getpass,
         stderr: Optional[TextIO] = None) -> int:
    """Entry point of the ``vmqtw-passwd`` console script; returns the exit status."""
    err = stderr if stderr is not None else sys.stderr
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        run(args, getpass)
    except CliError as e:
        err.write("vmqtw-passwd: {}\n".format(e))
        return 1
    except OSError as e:
        err.write("vmqtw-passwd: {}.\n".format(e))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
