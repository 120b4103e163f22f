"""Everything checked before any work, shared by ``run``, ``run --dry-run`` and ``retry``.

Nothing here touches the journal or calls the API: a problem found here exits 2 (or 3 for a
key the API refuses, found later by the model check) with nothing started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import secrets as secrets_mod
from .. import settings as settings_mod
from ..errors import UsageError
from ..manifest_types import STATE_DIR
from ..quota import Limits, resolve_limits
from .options import RunOptions

DERIVED_MANIFEST = "manifest.derived.yaml"


@dataclass
class Prepared:
    """A checked batch, ready to run."""

    opts: RunOptions
    manifest: Any  # manifest.Manifest
    journal: Path
    templates: dict[str, Any]
    pricing: Any  # pricing.PriceTable | None
    limits: dict[str, Limits]
    limit_sources: dict[str, str]  # "rpm" → "--rpm" | "settings.rpm" | "free tier" | "sandbox"
    warnings: list[str] = field(default_factory=list)

    @property
    def settings(self) -> Any:
        return self.manifest.settings

    @property
    def state_dir(self) -> Path:
        return self.journal.parent


def default_journal_path(output_root: Path) -> Path:
    """``<output root>/.gsvr/journal.jsonl``: outputs and their history travel together."""
    return output_root / STATE_DIR / "journal.jsonl"


def resolve_journal(opts_journal: str | None, manifest: Any) -> Path:
    if opts_journal:
        return Path(opts_journal).expanduser().resolve()
    if manifest.settings.journal:
        p = Path(manifest.settings.journal).expanduser()
        return (p if p.is_absolute() else manifest.base_dir / p).resolve()
    return default_journal_path(manifest.output_root)


def prepare(opts: RunOptions, *, echo: Callable[[str], None]) -> Prepared:
    """Load and check the manifest and everything it names; raise GsvrError (exit 2) on problems."""
    from ..gemini import resolve_credentials
    from ..gone import load_for_run
    from ..templates import load_templates

    manifest = load_for_run(opts.manifest, dict(opts.settings), force=bool(getattr(opts, "force", False)),
                            redo=getattr(opts, "retry_ids", ()))
    warnings = [str(w) for w in manifest.warnings]  # a Problem says "FILE:LINE: warning: ..." itself
    settings = manifest.settings
    journal = resolve_journal(opts.get("journal"), manifest)
    refuse_foreign_journal(journal)
    # The key must be usable before anything starts (exit 2, never echoed).
    resolve_credentials(settings.api_key_env, sandbox=bool(settings.sandbox))
    secrets_mod.register_env(settings.api_key_env)
    secrets_mod.register_notify_targets(settings.notify)
    secrets_mod.install_log_redaction()  # log records and tracebacks are scrubbed too
    check_notify_targets(settings.notify)
    pricing = check_model_prices(manifest, settings.pricing, warnings)
    templates = load_templates(manifest.templates_dirs)
    limits, sources = resolve_run_limits(manifest, opts)
    if opts.accept_identity:
        manifest.identity = opts.accept_identity
    return Prepared(opts=opts, manifest=manifest, journal=journal, templates=templates, pricing=pricing,
                    limits=limits, limit_sources=sources, warnings=warnings)


def refuse_foreign_journal(journal: Path) -> None:
    """A file there that is no journal (``--journal jobs/manifest.csv``) is refused before the run
    locks or reads it: it is somebody's file, not a damaged journal to repair."""
    from ..locate import starts_like_journal

    try:
        # (A folder, a FIFO or a device there is the manifest's problem: manifest._journal_unusable.)
        if journal.is_file() and not starts_like_journal(journal):
            raise UsageError(f"{journal} is not a gsvr-batch journal (it does not start with a journal record); "
                             f"give --journal a new file, or the journal of this batch")
    except OSError:
        return  # unreadable: BatchLog.open says why, with its own message


def refuse_foreign_outputs(manifest: Any, state: Any, *, force: bool = False) -> None:
    """Outputs that exist and were not made by this batch: refused (exit 2) before anything is
    written — unless --skip-existing or --overwrite says what to do. ``state``: the batch's journal
    state (None for a batch not started yet, whose journal does not exist)."""
    if state is not None and state.manifest_identity and state.manifest_identity != manifest.identity:
        return  # another batch's journal: the run refuses that, with its own message
    import os

    from .reconcile import foreign_outputs

    foreign = [job.output_path for job in foreign_outputs(manifest, state, force=force)]
    if foreign:
        shown = ", ".join(os.path.relpath(p, manifest.output_root) for p in foreign[:5])
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise UsageError(
            f"{len(foreign)} output file(s) already exist and were not made by this batch: {shown}{more}. "
            f"Nothing was started. Pass --skip-existing to keep them (those jobs are skipped) or --overwrite to "
            f"replace them")


def check_notify_targets(targets: list[Any]) -> None:
    """Raise UsageError listing every problem of the notify targets (bad URL, unset variable...)."""
    if not targets:
        return
    from ..notify import validate_targets

    problems = validate_targets(targets)
    if problems:
        raise UsageError("notify targets have problems:\n" + "\n".join(f"  {p}" for p in problems))


def check_model_prices(manifest: Any, pricing_file: str | None, warnings: list[str]) -> Any:
    """A model without a price is found before any work: a warning (costs show as 0), or an error
    (exit 2) when a --cost-limit could not be enforced without it."""
    from ..pricing import load_pricing

    table = load_pricing(pricing_file)  # a broken --pricing file is a usage error (exit 2)
    try:
        table.check_models(sorted({j.model for j in manifest.jobs}))
    except UsageError as exc:
        if manifest.settings.cost_limit is not None:
            raise UsageError(f"--cost-limit cannot be enforced: {exc}") from exc
        warnings.append(f"Warning: {exc}. Costs of those jobs are reported as $0.")
    return table


def _source_of(name: str, opts: RunOptions, manifest_value: Any) -> str | None:
    if opts.get(name) is not None:
        return "--" + name
    if manifest_value is not None:
        return f"settings.{name}"
    return None


def resolve_run_limits(manifest: Any, opts: RunOptions) -> tuple[dict[str, Limits], dict[str, str]]:
    """The rate limits in force per model, and where each came from (for the one line at start)."""
    s = manifest.settings
    models = sorted({j.model for j in manifest.jobs}) or ["gemini-2.5-flash"]
    sources: dict[str, str] = {}
    if s.sandbox:
        # The sandbox has no quota unless told to enforce one, so only explicit limits apply:
        # the offline demo should not crawl at free-tier speed or stop at 20 requests a day.
        limits = {m: Limits(rpm=s.rpm, tpm=s.tpm, rpd=s.rpd, file_rpm=None) for m in models}
        for name in ("rpm", "tpm", "rpd"):
            sources[name] = _source_of(name, opts, getattr(s, name)) or "sandbox: none"
        return limits, sources
    limits = {m: resolve_limits(m, str(s.tier), rpm=s.rpm, tpm=s.tpm, rpd=s.rpd) for m in models}
    # Where the tier came from, as the user would write it: "--tier 1", "settings.tier: 1", or the default.
    tier_src = _source_of("tier", opts, s.tier if s.tier != settings_mod.BY_NAME["tier"].default else None)
    if tier_src is None:
        tier = "free tier" if str(s.tier) == "free" else f"tier {s.tier}"
    else:
        tier = f"{tier_src} {s.tier}" if tier_src.startswith("--") else f"{tier_src}: {s.tier}"
    for name in ("rpm", "tpm", "rpd"):
        sources[name] = _source_of(name, opts, getattr(s, name)) or tier
    return limits, sources


def limits_line(prepared: Prepared, requests_needed: int) -> str:
    return limits_line_of(prepared.limits, prepared.limit_sources, requests_needed)


def limits_line_of(limits: dict[str, Limits], sources: dict[str, str], requests_needed: int) -> str:
    """``limits: 60 RPM (--rpm), 250,000 TPM (free tier), 20 RPD (free tier) — this batch needs …``."""
    model = sorted(limits)[0] if limits else None
    lim = limits.get(model) if model else None
    models = f" for {model}" + (f" (+{len(limits) - 1} more model(s))" if len(limits) > 1 else "")
    if lim is not None and all(getattr(lim, n) is None for n in ("rpm", "tpm", "rpd")) and \
            all(str(sources.get(n, "")).startswith("sandbox") for n in ("rpm", "tpm", "rpd")):
        return (f"limits{models}: none (offline sandbox: only --rpm, --tpm and --rpd apply there)"
                + (f" — this batch needs about {requests_needed:,} request{'s' if requests_needed != 1 else ''}"
                   if requests_needed else ""))
    parts = []
    for name, unit in (("rpm", "RPM"), ("tpm", "TPM"), ("rpd", "RPD")):
        value = getattr(lim, name, None) if lim else None
        shown = "no" if value is None else f"{value:,.0f}"
        parts.append(f"{shown} {unit} ({sources.get(name, '?')})")
    line = f"limits{models}: " + ", ".join(parts)
    rpd = lim.rpd if lim else None
    if requests_needed:
        line += f" — this batch needs about {requests_needed:,} request{'s' if requests_needed != 1 else ''}"
        if rpd is not None and requests_needed > rpd:
            days = -(-requests_needed // rpd)
            line += (f", more than {rpd:,} a day. Warning: the daily limit will stop it before the end (exit 75; "
                     f"the next run after midnight Pacific continues, or --wait sleeps until then; about {days} "
                     f"days in all); set --tier or --rpd if your project allows more")
    return line
