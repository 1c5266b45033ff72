"""One benchmark run: pick the conditions a setup offers, measure the draft cost, run the
interleaved loop, and collect everything (tables, summary, raw record) for the command to print."""

from __future__ import annotations

import os
import platform
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from llamafleet.bench import conditions as cond
from llamafleet.bench import runner, tightwad
from llamafleet.bench.analysis import ms_per_token, summarize
from llamafleet.bench.prompts import Prompt, built_in_prompts, load_prompts
from llamafleet.bench.session import BenchSetup
from llamafleet.bench.tables import render
from llamafleet.errors import UserError
from llamafleet.llama_client import LlamaClient


@dataclass
class BenchResult:
    conditions: list[str]
    summary: dict
    tables: str
    record: dict  # the --json document: settings, environment, prompts, every sample, the summary
    title: str


def benchmark(setup: BenchSetup, args, log_dir: Path) -> BenchResult:
    modes = _wanted_modes(setup, args)  # bad input fails before any request is sent
    prompts = _prompts(args)
    key = setup.server_key  # the deployed llama-servers' API key (None: servers that need none)
    rendered = {p.key: cond.render_chat_prompt(setup.target_url, p.text, key) for p in prompts}
    with ExitStack() as stack:
        conditions, notes = _conditions(setup, modes, args, log_dir, stack)
        draft_timings = draft_probe(setup.drafter_url, prompts, rendered, args.max_tokens, key)
        evals = {p.key: cond.prompt_eval(setup.target_url, rendered[p.key], key) for p in prompts}
        started, load_before = datetime.now(timezone.utc), os.getloadavg()
        samples = runner.run(
            conditions, prompts, rendered, max_tokens=args.max_tokens, repeats=args.repeats,
            warmup=args.warmup, count_tokens=lambda text: cond.count_tokens(setup.target_url, text, key),
            progress=args.progress,
        )
    load_after = os.getloadavg()
    notes.append(f"load average (1 min) {load_before[0]:.1f} before the run and {load_after[0]:.1f} after, "
                 f"on {os.cpu_count()} CPUs")
    names = [c.name for c in conditions]
    summary = summarize(samples, names, max_tokens=args.max_tokens, draft_ms_per_token=ms_per_token(draft_timings),
                        prompt_eval=evals)
    props = LlamaClient(30.0, token=key).json(f"{setup.target_url}/props")
    record = {
        "started_utc": started.isoformat(timespec="seconds"),
        "settings": {"max_tokens": args.max_tokens, "repeats": args.repeats, "warmup": args.warmup,
                     "temperature": 0, "endpoint": "/v1/completions"},
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    # other work on the machine shows up here, and in every condition alike
                    "load_average_1_5_15": {"before": load_before, "after": load_after}},
        "target": {"url": setup.target_url, "build_info": props.get("build_info"),
                   "model": props.get("model_path"), "slots": props.get("total_slots")},
        "setup": {"proxy_url": setup.proxy_url, "drafter_url": setup.drafter_url, "modes": setup.modes,
                  **setup.about},
        "conditions": {c.name: {"url": c.url, "mode_header": c.headers.get(cond.MODE_HEADER)} for c in conditions},
        "notes": notes,
        "draft_probe": {"url": setup.drafter_url, "timings": draft_timings},
        "prompts": [{"key": p.key, "category": p.category, "text": p.text, "rendered": rendered[p.key],
                     "prompt_eval": evals[p.key]} for p in prompts],
        "samples": [s.to_json() for s in samples],
        "summary": summary,
    }
    tables = render(summary, names)
    if notes:
        tables += "\n" + "\n".join(f"Note: {n}" for n in notes) + "\n"
    title = f"llamafleet bench: {setup.about.get('cluster', 'cluster')}, max_tokens {args.max_tokens}, {args.repeats} repeat(s)"
    return BenchResult(names, summary, tables, record, title)


def draft_probe(drafter_url: str | None, prompts: list[Prompt], rendered: dict[str, str],
                max_tokens: int, key: str | None = None) -> list[dict]:
    """The drafter's llama-server timings on the benchmark's prompts: the draft model's own decode
    cost, the numerator of the cost ratio c in the bound."""
    if drafter_url is None:
        return []
    drafter = cond.Condition("draft", drafter_url, cond.server_headers(key))
    return [drafter.complete(rendered[p.key], max_tokens).timings or {} for p in prompts]


def _prompts(args) -> list[Prompt]:
    prompts = load_prompts(args.prompts) if args.prompts else built_in_prompts()
    if args.per_category:
        prompts = [p for p in prompts if p.index < args.per_category]
    return prompts


def _wanted_modes(setup: BenchSetup, args) -> list[str]:
    wanted = args.modes or setup.modes
    missing = [m for m in wanted if m not in setup.modes]
    if missing:
        raise UserError(f"path(s) {', '.join(missing)} not offered by this cluster's proxy "
                        f"(offered: {', '.join(setup.modes) or 'none'})")
    return wanted


def _conditions(setup: BenchSetup, modes: list[str], args, log_dir: Path,
                stack: ExitStack) -> tuple[list[cond.Condition], list[str]]:
    """Baseline, each speculation path asked for, then Tightwad where it can run."""
    conditions = [cond.baseline(setup.target_url, setup.target_fields, setup.server_key)]
    conditions += [cond.llamafleet_path(m, setup.proxy_url, setup.token, setup.proxy_cert) for m in modes]
    notes = list(setup.notes)
    python = None if args.no_tightwad else tightwad.tightwad_python()
    if args.no_tightwad:
        notes.append("Tightwad left out (--no-tightwad).")
    elif python is None:
        notes.append(f"Tightwad not installed (pip install tightwad=={tightwad.TIGHTWAD_VERSION} to compare).")
    elif setup.drafter_url is None:
        notes.append("Tightwad left out: it needs a drafter llama-server and this cluster has none.")
    elif setup.server_key:
        notes.append("Tightwad left out: this cluster's llama-servers require an API key, which Tightwad "
                     f"{tightwad.TIGHTWAD_VERSION} does not send.")
    else:
        try:
            proxy = stack.enter_context(tightwad.running_tightwad(python, setup.target_url, setup.drafter_url, log_dir))
        except (RuntimeError, TimeoutError) as err:  # its log tail is in the message
            raise UserError(f"could not start Tightwad for the comparison (or pass --no-tightwad): {err}") from None
        conditions.append(cond.TightwadCondition("tightwad", proxy.url))
        notes.append(f"Tightwad {tightwad.tightwad_version(python)}, max_draft_tokens {tightwad.DRAFT_TOKENS}, "
                     f"on the same target and drafter.")
    return conditions, notes
