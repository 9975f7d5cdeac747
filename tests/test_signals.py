"""signals.py's first Ctrl-C: never raised inside the import system, never lost where Python
swallows exceptions. Each case runs in a child Python that takes signals as sp-deploy does
(signals.install) and sends itself, or is sent, real SIGINTs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

# a child's preamble: sp-deploy's handlers, and a wait for the owed raise that fails loudly
PREAMBLE = """
import _imp, os, signal, sys, threading, time, weakref
from solverpilot_deploy import signals
signals.install()

def wait_for_the_raise():
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pass
    print("never raised", flush=True)
    sys.exit(3)
"""


def child(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "child.py"
    script.write_text(PREAMBLE + textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )


def test_a_ctrl_c_during_an_import_is_raised_once_the_module_is_whole(tmp_path: Path) -> None:
    (tmp_path / "slowmod.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n"
        "total = sum(range(200000))\nWHOLE = True\n"
    )
    proc = child(
        tmp_path,
        """
        try:
            import slowmod
            wait_for_the_raise()
        except KeyboardInterrupt:
            module = sys.modules.get("slowmod")
            print("raised", getattr(module, "WHOLE", False), _imp.lock_held(), flush=True)
        """,
    )
    assert (proc.stdout, proc.stderr) == ("raised True False\n", "")


def test_a_raise_still_owed_when_a_fleet_begins_is_raised_before_it(tmp_path: Path) -> None:
    # the fleet (counted) reads the count at its start: a Ctrl-C owed from an import just
    # before it would be neither raised nor seen by the fleet
    quick = "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n"
    (tmp_path / "quickmod.py").write_text(quick)
    proc = child(
        tmp_path,
        """
        try:
            import quickmod
            with signals.counted():
                print("fleet ran", flush=True)
            print("after the fleet", flush=True)
        except KeyboardInterrupt:
            print("raised", signals.received(), flush=True)
        """,
    )
    assert (proc.stdout, proc.stderr) == ("raised 1\n", "")


def test_a_ctrl_c_swallowed_in_a_weakref_callback_is_raised_again(tmp_path: Path) -> None:
    proc = child(
        tmp_path,
        """
        class Thing:
            pass

        def callback(ref):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(200000):
                pass

        thing = Thing()
        ref = weakref.ref(thing, callback)
        try:
            del thing
            wait_for_the_raise()
        except KeyboardInterrupt:
            print("raised", signals.received(), flush=True)
        """,
    )
    # no "Exception ignored in": the swallowed KeyboardInterrupt is owed, not reported
    assert (proc.stdout, proc.stderr) == ("raised 1\n", "")


# a child that imports fresh modules in four threads and its main thread (each import's module
# lock is dropped after it, by the weakref callback that takes the global import lock) until a
# SIGINT: then one more import in a new thread must end within 5 s
IMPORTER = """
import importlib
ready = threading.Event()

def importer(tag):
    n = 0
    while True:
        n += 1
        importlib.import_module(f"fresh_{tag}_{n % 50}")
        sys.modules.pop(f"fresh_{tag}_{n % 50}", None)
        if tag == "main":  # the main thread also works outside the import system
            for _ in range(2000):
                pass
        if tag == "main" and n == 50:
            ready.set()
            print("ready", flush=True)

for tag in ("a", "b", "c", "d"):
    threading.Thread(target=importer, args=(tag,), daemon=True).start()
try:
    importer("main")
except KeyboardInterrupt:
    late = threading.Thread(target=importlib.import_module, args=("fresh_late_0",), daemon=True)
    late.start()
    late.join(5)
    print("deadlock" if late.is_alive() else "ok", flush=True)
    os._exit(0)
"""


def test_ctrl_c_at_random_moments_of_imports_in_many_threads_never_hangs_them(
    tmp_path: Path,
) -> None:
    for tag in ("a", "b", "c", "d", "main", "late"):
        for n in range(50):
            (tmp_path / f"fresh_{tag}_{n}.py").write_text(f"VALUE = {n}\n")
    script = tmp_path / "child.py"
    script.write_text(PREAMBLE + IMPORTER)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    runs = 40 if os.environ.get("CI") else 100
    outcomes: list[tuple[str, str]] = []
    for _ in range(runs):
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        time.sleep(random.uniform(0, 0.02))  # a random moment of the imports, not a wait
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            out += "(hung)"
        outcomes.append((out, err))
    bad = [outcome for outcome in outcomes if outcome != ("ok\n", "")]
    assert not bad, f"{len(bad)} of {runs} runs: {bad[:3]}"


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])


def test_a_term_owed_while_int_is_ignored_is_raised(tmp_path: Path) -> None:
    """A background job of a script has INT ignored (sp-deploy leaves it so): an owed TERM is
    raised all the same (the retry asked whether INT's handler was sp-deploy's)."""
    (tmp_path / "termmod.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\ntotal = sum(range(9))\n"
    )
    script = tmp_path / "child.py"
    script.write_text(
        PREAMBLE.replace(
            "signals.install()",
            "signal.signal(signal.SIGINT, signal.SIG_IGN)\nsignals.install((signal.SIGTERM,))",
        )
        + textwrap.dedent(
            """
            try:
                import termmod
                wait_for_the_raise()
            except KeyboardInterrupt:
                print("raised", flush=True)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )
    assert (proc.stdout, proc.stderr) == ("raised\n", "")


def test_a_json_document_is_written_with_the_owed_raises_timer_held_too() -> None:
    """cli._emit holds INT and TERM while it writes, and SIGALRM, which raises an owed one."""
    import io

    from solverpilot_deploy import cli

    held: list[set[int]] = []

    class Recording(io.StringIO):
        def write(self, text: str) -> int:
            held.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
            return super().write(text)

    saved = sys.stdout
    sys.stdout = Recording()
    try:
        cli._emit({"command": "profiles"})
    finally:
        sys.stdout = saved
        cli._EMITTED.clear()
    assert held and all({signal.SIGINT, signal.SIGTERM, signal.SIGALRM} <= h for h in held)
    assert signal.SIGALRM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


# entry.run in a child, its main replaced: what a signal at a given moment makes of the exit
ENTRY = """
import os, signal, sys
sys.argv = ["sp-deploy"]
# (as from a terminal: a test run in the background of a script has INT ignored, and
# sp-deploy rightly keeps it so)
signal.signal(signal.SIGINT, signal.default_int_handler)
from solverpilot_deploy import entry, signals
{setup}
sys.exit(entry.run())
"""


def run_entry(tmp_path: Path, setup: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "entry_child.py"
    script.write_text(ENTRY.format(setup=textwrap.dedent(setup)))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )


def test_a_signal_owed_when_a_command_ends_by_system_exit_is_still_exit_130(
    tmp_path: Path,
) -> None:
    """--help ends by SystemExit: a Ctrl-C owed from its last import is not lost (exit 0)."""
    (tmp_path / "lastmod.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n")
    proc = run_entry(
        tmp_path,
        """
        def main(argv):
            import lastmod
            print("usage: sp-deploy ...")
            raise SystemExit(0)
        entry.main = main
        """,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        130,
        "usage: sp-deploy ...\n",
        "sp-deploy: interrupted\n",
    )


def test_a_signal_while_the_handlers_are_installed_is_an_interrupt_not_a_traceback(
    tmp_path: Path,
) -> None:
    proc = run_entry(
        tmp_path,
        """
        install = signals.install
        def installing(numbers):
            install(numbers)
            os.kill(os.getpid(), signal.SIGTERM)  # as install's last handler is set
        signals.install = installing
        entry.main = lambda argv: 0
        """,
    )
    assert (proc.returncode, proc.stderr) == (130, "sp-deploy: interrupted\n")


def test_an_interrupt_that_escapes_main_is_reported_once(tmp_path: Path) -> None:
    """An owed Ctrl-C raised while main reports an error escapes it: entry says so."""
    proc = run_entry(
        tmp_path,
        """
        def main(argv):
            signals.handler(signal.SIGINT, None)  # raises: the first signal
        entry.main = main
        """,
    )
    assert (proc.returncode, proc.stderr) == (130, "sp-deploy: interrupted\n")


def test_a_term_while_the_early_handler_writes_its_message_adds_no_second_one(
    tmp_path: Path,
) -> None:
    """Before the CLI is imported, a first signal writes "interrupted" and exits: a second one
    that comes during that write is ignored, not handled again (the message twice)."""
    script = tmp_path / "early.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal
            from solverpilot_deploy import entry
            write = os.write
            def writing(fd, data):
                os.kill(os.getpid(), signal.SIGTERM)  # during the message's write
                return write(fd, data)
            os.write = writing
            entry._interrupted_early(signal.SIGINT, None)
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (130, "sp-deploy: interrupted\n")


def test_an_ignored_int_stays_ignored_in_a_fleet(tmp_path: Path) -> None:
    """A background job of a script has INT ignored: a fleet (counted) neither counts nor acts
    on it, as one-host commands do not; a TERM is counted."""
    proc = child(
        tmp_path,
        """
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with signals.counted():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100000):
                pass
            print(signals.received(), flush=True)
        print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN, flush=True)
        """,
    )
    assert (proc.stdout, proc.stderr) == ("1\nTrue\n", "")
