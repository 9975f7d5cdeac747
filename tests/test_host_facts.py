"""host_facts: what push keeps of each host, and how little it trusts it."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from solverpilot_deploy.host_facts import Memory, fact_keys, facts_of, facts_sha256
from solverpilot_deploy.render_cache import cache_dir
from solverpilot_deploy.resources import templates_dir

FACTS = "".join(f"{key}={'debian' if key == 'os_id' else ''}\n" for key in fact_keys())


def test_the_facts_are_the_probes_sp_fact_lines_in_their_order() -> None:
    text = (templates_dir() / "remote" / "probing.sh").read_text()
    said = re.findall(r"sp_fact ([a-z_0-9]+) ", text)
    assert fact_keys() == tuple(dict.fromkeys(said))
    assert fact_keys()[:3] == ("os_id", "os_like", "bash") and "sha256" in fact_keys()
    # the state (the wrapper, the DB, what push must repair) is not a fact: it changes
    assert not {"wrapper", "db", "issue", "server_open", "server_unsafe"} & set(fact_keys())
    # the facts are the lines the answer begins with (push.sh's install may say sha256= later)
    lines = ("os_id=debian", "bash=5.2", "wrapper=abc", "sha256=ab", "issue=~/x is a link")
    assert facts_of(lines) == "os_id=debian\nbash=5.2\n"
    # (that the host hashes them as facts_sha256 does shows in test_deploy_ssh: a host seen
    # before installs in its probe's step)
    assert len(facts_sha256(facts_of(lines))) == 64


def test_learned_facts_are_kept_per_host_in_a_private_file() -> None:
    Memory("a").learn(FACTS)
    assert Memory("a").known() == FACTS
    assert Memory("b").known() is None
    entry = cache_dir() / Memory("a").name
    assert entry.stat().st_mode & 0o777 == 0o600
    assert cache_dir().stat().st_mode & 0o777 == 0o700
    before = entry.stat().st_mtime_ns
    Memory("a").learn(FACTS)  # the same facts: nothing written
    assert entry.stat().st_mtime_ns == before
    assert [p.name for p in cache_dir().iterdir()] == [entry.name]  # no temporary file left


def test_what_is_not_sound_is_not_used() -> None:
    entry = cache_dir() / Memory("a").name
    Memory("a").learn(FACTS)
    whole = FACTS.encode()
    for bad in (
        b"rm -rf ~\n",
        whole[:-1],
        b"\xff\n",
        b"os_id=x\n" * 2000,
        b"",
        whole + b"sha256=x\n",
        whole.replace(b"os_id=", b"bash=", 1),
        b"os_id=x\n" + whole,
    ):
        entry.write_bytes(bad)
        assert Memory("a").known() is None, bad
    # not kept: too large, or not every fact in order (a probe cut short)
    entry.unlink()
    for bad in (FACTS.replace("os_id=debian", "os_id=" + "x" * 9000), FACTS.split("bash=")[0]):
        Memory("a").learn(bad)
        assert not entry.exists() and Memory("a").known() is None


def test_links_fifos_and_folders_others_can_write_are_never_used(tmp_path: Path) -> None:
    """An entry that is a link or a fifo is not followed nor waited on; a cache folder others
    can write (another user could have put facts of theirs there) is neither read nor
    written."""
    Memory("a").learn(FACTS)
    entry = cache_dir() / Memory("a").name
    entry.unlink()
    target = tmp_path / "elsewhere"
    target.write_text(FACTS)
    entry.symlink_to(target)
    assert Memory("a").known() is None
    entry.unlink()
    os.mkfifo(entry)
    done = threading.Event()
    found: list[str | None] = []
    reader = threading.Thread(target=lambda: (found.append(Memory("a").known()), done.set()))
    reader.daemon = True
    reader.start()
    assert done.wait(5), "a fifo entry blocked the read"
    assert found == [None]
    entry.unlink()
    Memory("a").learn(FACTS)
    cache_dir().chmod(0o777)
    assert Memory("a").known() is None
    Memory("b").learn(FACTS)
    assert not (cache_dir() / Memory("b").name).exists()
