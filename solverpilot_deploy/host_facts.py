"""What each host was, as its last probe said: so that a push can probe and install in one step.

A probe's answer begins with the host's facts (templates/remote/probing.sh's sp_fact lines: its
os-release, its tools and their versions, the server folder and its filesystem): what picks the
profile, says whether the wrapper can run there, and what the warnings are. They are kept here
per host name, in the user's cache folder (render_cache's, the user's own and no one else's to
write). The next push renders for the facts kept and sends probe and install together
(push.sh), with the sha256 of those facts: the host installs only if its facts hash the same,
so a host that changed (another distro, bash, a missing tool), a wrong entry or a name that
now means another host costs the round trip saved, never a wrong install. Any failure of the
memory (no cache folder, a damaged entry) only costs that round trip.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
from dataclasses import dataclass

from solverpilot_deploy.render_cache import cache_dir, open_folder, read_entry, write_entry
from solverpilot_deploy.resources import templates_dir

MAX_BYTES = 8192  # facts are a few hundred bytes: a larger entry is not read, nor kept


@functools.cache
def fact_keys() -> tuple[str, ...]:
    """The keys of the facts, in the order probing.sh says them (its sp_fact lines)."""
    text = (templates_dir() / "remote" / "probing.sh").read_text(encoding="utf-8")
    return tuple(dict.fromkeys(re.findall(r"^\s*(?:.*\s)?sp_fact ([a-z_0-9]+) ", text, re.M)))


def facts_of(lines: tuple[str, ...]) -> str:
    """The facts a probe's answer begins with, as the host hashes them: each line and its end
    (only those first lines: push.sh's install may say sha256= too)."""
    keys = frozenset(fact_keys())
    facts = itertools.takewhile(lambda line: line.partition("=")[0] in keys, lines)
    return "".join(f"{line}\n" for line in facts)


def facts_sha256(facts: str) -> str:
    return hashlib.sha256(facts.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Memory:
    """The facts kept for one host name."""

    host: str

    @property
    def name(self) -> str:
        """The entry's name in the cache folder."""
        return f"host-{hashlib.sha256(self.host.encode('utf-8', 'surrogateescape')).hexdigest()}"

    def known(self) -> str | None:
        """The facts kept, or None (none kept, or not sound: every fact once, in order)."""
        folder = open_folder(cache_dir(), create=False)
        if folder is None:
            return None
        try:
            data = read_entry(folder, self.name, MAX_BYTES)
        finally:
            os.close(folder)
        try:
            text = data.decode("utf-8") if data else ""
        except UnicodeDecodeError:
            return None
        return text if _whole(text) else None

    def learn(self, facts: str) -> None:
        """Keep ``facts`` (a probe's, facts_of) for the next push, when they are new."""
        data = facts.encode("utf-8")
        if not _whole(facts) or len(data) > MAX_BYTES or facts == self.known():
            return
        folder = open_folder(cache_dir(), create=True)
        if folder is None:
            return
        try:
            write_entry(folder, self.name, data)
        finally:
            os.close(folder)


def _whole(facts: str) -> bool:
    """Every fact, once each, in the probe's order (a probe cut short, a damaged entry: no)."""
    lines = facts.split("\n")
    return lines[-1] == "" and [line.partition("=")[0] for line in lines[:-1]] == list(fact_keys())
