"""Command lines against what a build's binaries accept (pure).

The deploy renders every command line from the pinned build's capabilities; this is the last check
before a unit is written: each service's binary must be the build's own, each flag one its binary
lists (and not only as removed), and each value of a fixed-choice flag one it accepts. A refusal names
the host, the service, the flag and the nearest valid spelling.
"""

from __future__ import annotations

import ntpath
import posixpath
import re

from llamafleet.config.builds import PURPOSE_SPELLINGS, BuildCaps, FlagTable, nearest_flags

PROGRAM_OF_ROLE = {"target": "server", "target-plain": "server", "drafter": "server", "rpc-worker": "rpc"}
_NUMBER = re.compile(r"^-?[0-9.]+$")


def argv_problems(table: FlagTable, args: list[str]) -> list[tuple[str, str]]:
    """(flag, what is wrong) for each argument the table refuses; values are skipped by arity."""
    problems = []
    index = 0
    while index < len(args):
        token = args[index]
        index += 1
        if not token.startswith("-") or _NUMBER.match(token):
            continue  # a value (a flag's arity is what skips values; a stray one is validate's business)
        option = table.usable(token)
        if option is None:
            problems.append((token, "unknown"))
            continue
        values = args[index:index + option.values]
        if option.choices and values and values[0] not in option.choices:
            problems.append((token, f"value {values[0]!r} is not one of {', '.join(option.choices)}"))
        index += option.values
    return problems


def valid_spellings(caps: BuildCaps, program: str, flag: str) -> list[str]:
    """What to write instead of ``flag``: the build's own spelling when ``flag`` is another build's
    name for a deploy purpose (``--draft-max`` -> ``--spec-draft-n-max``), else the closest option."""
    for purpose, (owner, spellings) in PURPOSE_SPELLINGS.items():
        if owner == program and flag in spellings and caps.flag(purpose):
            return list(caps.table(program).usable(caps.flag(purpose)).flags)
    return nearest_flags(caps, program, flag)


def command_line_problems(host: str, services: list[dict], caps: BuildCaps, windows: bool = False) -> list[str]:
    """One message per refusal. ``services``: ``{"service", "role", "argv"}`` as the deploy renders them."""
    messages = []
    for svc in services:
        program = PROGRAM_OF_ROLE.get(svc["role"])
        if program is None:
            continue  # not a llama.cpp process (the proxy)
        where = f"hosts.{host}: service {svc['service']}"
        binary = (ntpath if windows else posixpath).basename(svc["argv"][0]).removesuffix(".exe")
        if binary != caps.binary(program):
            messages.append(f"{where}: llama.cpp {caps.build} has no {binary}; its {program} binary is "
                            f"{caps.binary(program)}")
        for flag, problem in argv_problems(caps.table(program), list(svc["argv"][1:])):
            if problem == "unknown":
                nearest = valid_spellings(caps, program, flag)
                hint = f"nearest valid: {' / '.join(nearest)}" if nearest else "no similar flag"
                messages.append(f"{where}: {caps.binary(program)} {caps.build} has no flag {flag} ({hint})")
            else:
                messages.append(f"{where}: {caps.binary(program)} {caps.build} refuses {flag}: {problem}")
    return messages
