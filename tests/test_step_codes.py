"""One table names the remote steps' exit codes (issue 19): templates/remote/codes. Every
status a step can exit with is in it, every name in it is used, and the Python side reads the
names, never the numbers."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from solverpilot_deploy.remote import (
    OWN_CODES,
    StepResult,
    code_name,
    code_number,
    codes_shell,
    step_codes,
    step_names,
    step_script,
)
from solverpilot_deploy.resources import templates_dir

REMOTE = templates_dir() / "remote"
PACKAGE = Path(__file__).resolve().parent.parent / "solverpilot_deploy"
# the files whose exits take the table's codes: every step but OWN_CODES, and what goes with them
CONVERTED = sorted(
    [REMOTE / f"{name}.sh" for name in step_names() if name not in OWN_CODES]
    + [REMOTE / "lib.sh", REMOTE / "scan.sh", REMOTE / "end.sh"]
)
# Python modules that read step results (deploy.py reads OWN_CODES' steps, by number, for now)
READERS = ("jobs.py", "reconcile.py", "slurm.py", "status.py", "watch.py", "remote.py")
# exit or cancel.sh's show as a command, and its word: "exit", "exit 1", trap 'exit "$E_X"'
EXIT = re.compile(
    r"""(?:^|(?<=[\s;&|{('])|(?<=then|else)|(?<=do))(exit|show)"""
    r"""((?:\s+(?:"[^"]*"|[^\s;&|)}'"]+))?)(?=\s*(?:$|[;&|)}']))"""
)
USE = re.compile(r"\$\{?(E_[A-Z0-9_]+)")


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(number, line) of the lines of ``path`` that sh runs as the step: no comments, nor the
    bodies of quoted here-documents (another script, e.g. run.sh's launcher, or a payload)."""
    found, end = [], None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if end is not None:
            end = None if line == end else end
            continue
        heredoc = re.search(r"<<-?'([A-Za-z_]+)'", line)
        if heredoc:
            end = heredoc[1]
        text = line.split(" # ")[0]
        if not text.lstrip().startswith("#"):
            found.append((n, text))
    return found


def heredoc_bodies(path: Path) -> str:
    text, bodies, end = path.read_text(encoding="utf-8"), [], None
    for line in text.splitlines():
        if end is not None:
            if line == end:
                end = None
            else:
                bodies.append(line)
        elif found := re.search(r"<<-?'([A-Za-z_]+)'", line):
            end = found[1]
    return "\n".join(bodies)


def test_the_table_parses_each_name_and_number_once() -> None:
    codes = step_codes()
    assert len({c.name for c in codes}) == len({c.number for c in codes}) == len(codes)
    assert code_number("ok") == 0 and code_name(0) == "ok"
    assert code_number("unsafe_server_dir") == 21  # what the wrapper's own docs point to
    assert all(0 <= c.number <= 255 and c.meaning for c in codes)
    assert code_name(199) == "exit 199"
    assert StepResult(code_number("no_wrapper"), (), "").code == "no_wrapper"
    with pytest.raises(KeyError):
        code_number("no_such_code")


def test_every_exit_of_a_step_is_a_name_of_the_table_and_every_name_is_used() -> None:
    names = {f"E_{c.name.upper()}" for c in step_codes()}
    used: set[str] = set()
    wrong = []
    for path in CONVERTED:
        for n, line in code_lines(path):
            used.update(USE.findall(line))
            for verb, arg in EXIT.findall(line):
                arg = arg.strip()
                if arg in ("", "0") or re.fullmatch(r'"\$E_[A-Z0-9_]+"', arg):
                    continue
                if (path.name, verb, arg) == ("cancel.sh", "exit", '"$1"'):  # show's own exit
                    continue
                wrong.append(f"{path.name}:{n}: {line.strip()}")
    assert not wrong, "exits by number instead of by a name of templates/remote/codes"
    assert used <= names, f"not in templates/remote/codes: {sorted(used - names)}"
    # ok is the status of a step that ends as it should (end.sh's "@end 0")
    assert names - used == {"E_OK"}, f"names no step exits with: {sorted(names - used - {'E_OK'})}"


def test_no_script_a_step_writes_for_later_reads_the_codes() -> None:
    """run.sh's launcher runs in tmux, without the step's variables."""
    for path in CONVERTED:
        assert not USE.search(heredoc_bodies(path)), path.name


def test_python_compares_names_of_the_table_never_numbers() -> None:
    names = {c.name for c in step_codes()}
    for module in READERS:
        tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare) or not isinstance(node.left, ast.Attribute):
                continue
            values = [
                elt
                for comp in node.comparators
                for elt in (comp.elts if isinstance(comp, ast.Tuple) else [comp])
            ]
            where = f"{module}:{node.lineno}"
            if node.left.attr == "code":
                for value in values:
                    assert isinstance(value, ast.Constant) and value.value in names, where
            left = node.left.value
            if node.left.attr == "status" and isinstance(left, ast.Name) and left.id == "result":
                raise AssertionError(f"{where}: a step's status read by number")


@pytest.mark.parametrize("shell", ["sh", "dash", "bash", "busybox"])
def test_the_steps_get_each_code_as_a_shell_variable(shell: str) -> None:
    if not shutil.which(shell):
        pytest.skip(f"no {shell}")
    argv = [shell, "sh"] if shell == "busybox" else [shell]
    each = (
        'for v in $(set | sed -n "s/^\\(E_[A-Z0-9_]*\\)=.*/\\1/p"); do eval "echo $v=\\$$v"; done'
    )
    script = f"{codes_shell()}{each}\n"
    done = subprocess.run([*argv, "-c", script], capture_output=True, text=True, check=True)
    assert sorted(done.stdout.split()) == sorted(
        f"E_{c.name.upper()}={c.number}" for c in step_codes()
    )


def test_every_step_script_defines_the_codes_once_before_its_lines() -> None:
    for name in step_names():
        script = step_script(name)
        assert script.count(codes_shell()) == 1 and "# @codes\n" not in script, name
        assert script.index(codes_shell()) < script.index("sp_main() {"), name
