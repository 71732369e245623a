"""Every code block in README.md, CONTRIBUTING.md and docs/*.md runs, or is a fragment.

- A ```python block runs in a fresh interpreter, in an empty temporary directory, with
  a timeout: as a script, or, when it defines ``test_*`` functions, through pytest
  (the installed plugin provides the fixtures), which must pass them all. The
  interpreter may reach nothing but loopback addresses: a sitecustomize refuses any
  other name lookup or connection (Python sockets; the C++ TcpProbe and FaultProxy
  are not covered, the blocks only point them at 127.0.0.1).
- A ```python block is skipped when the line just before its fence is an HTML comment
  giving the reason, ``<!-- fragment: the constructor's signature -->``. The comment
  does not render. A marker anywhere else, or without a reason, fails the test, so
  none is left behind; at most a third of the python blocks may be fragments.
- Shell blocks (```sh, ```bash, ```console, ```shell) are not run: they change the
  machine (``make test``) or need state they do not create. Their commands are
  checked: ``cpcsync ...`` must name a real subcommand whose ``--help`` shows every
  option used, ``make ...`` a real target of the Makefile, ``pip install`` this
  checkout with extras pyproject.toml declares, and ``sudo apt-get install`` the
  build packages of scripts/bootstrap.sh. Any other command fails the test.

CONTRIBUTING.md states the convention for writers. Test ids are ``file:line`` of the
opening fence.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _docs_blocks import FENCE, MARKER, PAGES, ROOT, Block, blocks

TIMEOUT = 60.0  # seconds per block; a block that needs longer is not an example
SHELL = {"sh", "bash", "console", "shell", "shell-session"}


BLOCKS = [b for page in PAGES for b in blocks(page)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]
SHELL_BLOCKS = [b for b in BLOCKS if b.lang in SHELL]

# Loaded by every block's interpreter (PYTHONPATH): no name lookups or connections
# beyond the loopback interface.
_GUARD = textwrap.dedent(
    """
    import ipaddress
    import socket

    _LOCAL_NAMES = {"localhost", "localhost.localdomain"}


    def _local(host):
        if host is None:
            return True
        if isinstance(host, bytes):
            host = host.decode()
        if host in _LOCAL_NAMES or host == "":
            return True
        try:
            address = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        return address.is_loopback or address.is_unspecified


    def _refuse(what, host):
        raise OSError(f"docs example tried to reach {host!r} ({what}): "
                      "examples may use 127.0.0.1 only")


    _getaddrinfo = socket.getaddrinfo


    def getaddrinfo(host, *args, **kwargs):
        if not _local(host):
            _refuse("name lookup", host)
        return _getaddrinfo(host, *args, **kwargs)


    socket.getaddrinfo = getaddrinfo

    for _name in ("connect", "connect_ex"):
        _method = getattr(socket.socket, _name)

        def _guarded(self, address, _method=_method, _name=_name):
            if isinstance(address, tuple) and not _local(address[0]):
                _refuse(_name, address[0])
            return _method(self, address)

        setattr(socket.socket, _name, _guarded)
    """
)


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("docs-guard")
    (where / "sitecustomize.py").write_text(_GUARD, encoding="utf-8")
    return where


def _defines_tests(code: str) -> bool:
    return re.search(r"^(async )?def test_\w*\(", code, re.M) is not None


def _run_block(block: Block, where: Path, guard: Path) -> subprocess.CompletedProcess[str]:
    name = "test_block.py" if _defines_tests(block.code) else "block.py"
    (where / name).write_text(block.code, encoding="utf-8")
    if name == "block.py":
        argv = [sys.executable, "-W", "error", name]
    else:
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]
        argv.append(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(guard), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    try:
        return subprocess.run(
            argv,
            cwd=where,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.id}: still running after {TIMEOUT:.0f} s\n{exc.stdout}\n{exc.stderr}")


@pytest.mark.parametrize("block", [b for b in PYTHON if not b.fragment], ids=lambda b: b.id)
def test_python_block_runs(block: Block, tmp_path: Path, guard_dir: Path) -> None:
    proc = _run_block(block, tmp_path, guard_dir)
    output = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, f"{block.id} failed (exit {proc.returncode})\n{output}"
    if _defines_tests(block.code):
        tests = len(re.findall(r"^(?:async )?def test_", block.code, re.M))
        assert re.search(rf"\b{tests} passed\b", proc.stdout), f"{block.id}\n{output}"


@pytest.mark.parametrize(
    "call",
    [
        'socket.getaddrinfo("example.org", 443)',
        'socket.create_connection(("192.0.2.1", 80), timeout=0.1)',  # TEST-NET-1
    ],
)
def test_blocks_reach_only_loopback(call: str, tmp_path: Path, guard_dir: Path) -> None:
    # The guard itself: a block that looks a name up or connects off the machine fails
    # before any packet leaves, while loopback works.
    code = (
        "import socket\n"
        "server = socket.create_server(('127.0.0.1', 0))\n"
        "socket.create_connection(server.getsockname(), timeout=5).close()\n"
        "server.close()\n"
        f"{call}\n"
    )
    block = Block(ROOT / "README.md", 0, "python", code, fragment=False)
    proc = _run_block(block, tmp_path, guard_dir)
    assert proc.returncode != 0
    assert "examples may use 127.0.0.1 only" in proc.stderr, proc.stderr
    assert "line 5" in proc.stderr, proc.stderr  # the loopback lines before it ran


def test_fragment_markers_sit_on_python_blocks() -> None:
    # A marker with its reason, on the line above a python fence; any other (one
    # without a reason, or away from a fence) would silently do nothing. Markers
    # shown inside a code block (CONTRIBUTING.md's) are text.
    fenced = {(b.page, b.line - 1) for b in PYTHON if b.fragment}
    inside = {(b.page, n) for b in BLOCKS for n in b.lines}
    stray = []
    for page in PAGES:
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            if MARKER.search(line) and (page, n) not in fenced | inside:
                stray.append(f"{page.relative_to(ROOT)}:{n}")
    assert not stray, (
        f"not a '<!-- fragment: reason -->' line directly above a ```python fence: {stray}"
    )


def test_fragments_are_few() -> None:
    # Most examples must run; a page of fragments is a page nobody checks.
    fragments = [b.id for b in PYTHON if b.fragment]
    assert len(fragments) <= len(PYTHON) // 3, fragments


def _commands(block: Block) -> list[list[str]]:
    """The commands of a shell block: prompts, comments and continuations handled."""
    commands = []
    text = re.sub(r"\\\n", " ", block.code)
    for raw in text.splitlines():
        line = re.sub(r"^\s*\$\s+", "", raw).strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        # the first command of a pipeline or list; redirections end it
        cut = next((i for i, w in enumerate(words) if w in {"|", "||", "&&", ";", ">", ">>"}), None)
        commands.append(words[:cut])
    return commands


def _shell_commands(program: str) -> list[object]:
    return [
        pytest.param(words, id=f"{b.id}:{' '.join(words[:3])}")
        for b in SHELL_BLOCKS
        for words in _commands(b)
        if words[:1] == [program]
    ]


CLI_COMMANDS = _shell_commands("cpcsync")
MAKE_COMMANDS = _shell_commands("make")
PIP_COMMANDS = _shell_commands("pip")
APT_COMMANDS = _shell_commands("sudo")  # sudo apt-get install ...
# Shown, not checked: they create a virtualenv and enter it.
HARMLESS = [["python3", "-m", "venv", ".venv"]]


def test_shell_blocks_are_checked() -> None:
    # Every shell command shown is one of the kinds checked below.
    checked = {"cpcsync", "make", "pip", "sudo"}
    unchecked = [
        f"{b.id}: {' '.join(w)}"
        for b in SHELL_BLOCKS
        for w in _commands(b)
        if w and w[0] not in checked and w not in HARMLESS
    ]
    assert not unchecked, f"shell commands the docs test does not know how to check: {unchecked}"
    assert CLI_COMMANDS and MAKE_COMMANDS and PIP_COMMANDS and APT_COMMANDS


@pytest.mark.parametrize("words", CLI_COMMANDS)
def test_cli_command_exists_with_its_options(words: list[str]) -> None:
    sub = words[1]
    proc = subprocess.run(
        [sys.executable, "-m", "cpcsync", sub, "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for option in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", proc.stdout), (
            f"cpcsync {sub} --help does not mention {option}"
        )


@pytest.mark.parametrize("words", MAKE_COMMANDS)
def test_make_target_exists(words: list[str]) -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in (w for w in words[1:] if "=" not in w and not w.startswith("-")):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no make target {target}"


def _extras() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    table = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", table, re.M))


@pytest.mark.parametrize("words", PIP_COMMANDS)
def test_pip_installs_this_package_with_extras_that_exist(words: list[str]) -> None:
    assert words[:2] == ["pip", "install"], words
    for spec in words[2:]:
        m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", spec)
        assert m, f"pip install {spec}: the docs install this checkout (. or .[extra])"
        missing = set((m[1] or "").split(",")) - {""} - _extras()
        assert not missing, f"pip install {spec}: no such extra in pyproject.toml"


def _bootstrap_packages(array: str) -> set[str]:
    text = (ROOT / "scripts" / "bootstrap.sh").read_text(encoding="utf-8")
    m = re.search(rf"^{array}=\((.*?)\)", text, re.M | re.S)
    assert m, f"scripts/bootstrap.sh has no {array}=(...)"
    return set(m[1].split())


@pytest.mark.parametrize("words", APT_COMMANDS)
def test_apt_line_has_what_the_build_needs(words: list[str]) -> None:
    # The install section's apt-get line names every package bootstrap.sh installs to
    # build the package, and nothing else.
    assert words[:4] == ["sudo", "apt-get", "install", "-y"], words
    shown = set(words[4:])
    missing = _bootstrap_packages("APT_BUILD") - shown
    assert not missing, f"the docs' apt-get line lacks {sorted(missing)}"
    extra = shown - _bootstrap_packages("APT_BUILD")
    assert not extra, f"the docs' apt-get line has packages the build does not need: {extra}"


def test_the_extractor_sees_every_block() -> None:
    # The parser above must find as many fences as a plain count does: a block it
    # missed would never run.
    for page in PAGES:
        fences = sum(
            1 for line in page.read_text(encoding="utf-8").splitlines() if FENCE.match(line)
        )
        found = [b for b in BLOCKS if b.page == page]
        assert fences == 2 * len(found), page
