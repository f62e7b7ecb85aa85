"""Self-contained offline HTML reports of toy runs, associative-memory runs, language-model runs
(with their study), truncation studies and checkpoint studies.

>>> import mechtrunc as mt
>>> rep = mt.write_report("runs/demo")    # writes runs/demo/report.html, returns a Report
>>> rep                                    # renders inline in Jupyter

A report is a list of sections; each result kind has an ordered list of section builders
(``SECTIONS[kind]``), functions ``Context -> Section | list[Section] | None``.  A new analysis
adds its section with :func:`register_section` without touching the others.  Reports read
results from their files (:mod:`mechtrunc.report.readers`) and recompute only what a few
examples need (attributions, attention patterns), and only when the model can be loaded;
otherwise the table-based sections render and the page says why the others are missing.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Callable

from mechtrunc._checks import check_choice
from mechtrunc._choices import REPORT_KINDS
from mechtrunc._progress import progress_bar
from mechtrunc.report.context import Context
from mechtrunc.report.page import CircuitsView, Report, Section, fragment, html_table, note
from mechtrunc.report.readers import (
    CheckpointResults, NotAResultError, ToyRun, TruncationResults, detect, read_result,
)

__all__ = ["write_report", "build_report", "register_section", "SECTIONS", "Report", "Section", "CircuitsView",
           "Context", "NotAResultError", "read_result", "detect", "html_table", "note", "fragment"]

SectionBuilder = Callable[[Context], "Section | list[Section] | None"]


def _default_sections() -> dict[str, list[SectionBuilder]]:
    from mechtrunc.report import checkpoints, circuits, lm, memory, toy, truncation

    return {"toy": list(toy.SECTIONS), "memory": list(memory.SECTIONS), "truncation": list(truncation.SECTIONS),
            "checkpoints": list(checkpoints.SECTIONS), "lm": list(lm.SECTIONS),
            "circuits": list(circuits.SECTIONS)}


SECTIONS: dict[str, list[SectionBuilder]] = {}


def _sections() -> dict[str, list[SectionBuilder]]:
    if not SECTIONS:
        SECTIONS.update(_default_sections())
    return SECTIONS


def register_section(kind: str, builder: SectionBuilder, before: SectionBuilder | None = None) -> None:
    """Add a section builder to every report of ``kind`` (``"toy"``, ``"truncation"``,
    ``"checkpoints"``, ``"memory"``, ``"lm"``), at the end or before another builder."""
    secs = _sections()
    check_choice("report kind", kind, secs)
    lst = secs[kind]
    if builder in lst:
        return
    lst.insert(lst.index(before) if before in lst else len(lst), builder)


def _version() -> str:
    try:
        from mechtrunc import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


def _meta(ctx: Context, command: str) -> dict:
    r = ctx.result
    meta: dict = {"report kind": REPORT_KINDS[r.kind],
                  "result directory": str(Path(r.directory).resolve())}
    if isinstance(r, ToyRun):
        m, t = r.config.get("model", {}), r.train
        meta["model"] = (f"toy Transformer: {m.get('n_layers')} layers, d_model {m.get('d_model')}, "
                         f"{m.get('n_heads', 1)} head(s), vocab {m.get('d_vocab')}, ffn {m.get('ffn')}")
        meta["revision"] = f"final weights after {t.get('steps')} steps (model.safetensors)"
        meta["prompts"] = (f"clean test set: {t.get('test_size')} sequences of {t.get('seq_len')} tokens "
                           f"(seed {int(t.get('seed', 0)) + 10_000}), read at repeated triggers; competitor: noise "
                           f"token {r.config.get('task', {}).get('noise_token')}")
        meta["seed"] = t.get("seed")
        meta["run made by"] = _toy_command(r)
    elif r.kind == "memory":
        m, t = r.config.get("memory", {}), r.config.get("train", {})
        meta["model"] = (f"linear associative memory: N {m.get('n_inputs')} inputs, V {m.get('n_outputs')} outputs, "
                         f"d {m.get('d')}, {m.get('embeddings')} embeddings, init {m.get('init')}")
        meta["revision"] = f"final weights after {t.get('steps')} {t.get('method', '')} steps (model.safetensors)"
        meta["prompts"] = f"every input x with its clean target y*(x), weighted by p(x) ({m.get('input_dist')})"
        meta["seed"] = m.get("seed")
        meta["run made by"] = f"mechtrunc memory train --out {r.directory} (options in config.json)"
    elif r.kind == "lm":
        c, summ = r.config, r.summary or {}
        size = f", {summ['parameters']:,} parameters" if summ.get("parameters") else ""
        vocab = f", vocabulary {summ['vocab_size']:,}" if summ.get("vocab_size") else ""
        meta["model"] = (f"GPT-NeoX of mechtrunc.models.lm: {c.get('n_layers')} layers, d_model {c.get('d_model')}, "
                         f"{c.get('n_heads')} heads, context {c.get('ctx')}{size}{vocab}")
        meta["revision"] = (f"{len(r.steps)} checkpoints, step{r.steps[0]} ... step{r.steps[-1]} of {c.get('steps')} "
                            "steps; the truncation grid uses the final one")
        if r.study:
            from mechtrunc.report.lm import prompt_names

            meta["prompts"] = (f"held-out {prompt_names(r)} prompts (mechtrunc.studies.lm.lm_study_prompts, "
                               f"seed 0): {r.study.get('n_prompts')} per set in a select draw (chooses a truncation) "
                               "and an eval draw (reports it)")
        else:
            meta["prompts"] = f"no study yet (mechtrunc lm study {r.directory})"
        meta["seed"] = f"{c.get('seed')} (initialisation), corpus seed {c.get('corpus', {}).get('seed')}"
        meta["run made by"] = f"mechtrunc lm train --out {r.directory} (options in run.json)"
        if r.study:
            n = r.study.get("n_prompts")
            meta["study made by"] = (f"mechtrunc lm study {r.directory}" + (f" --n {n}" if n != 200 else "")
                                     + f"   (settings in study/study.json: {r.study})")
    else:
        from mechtrunc.report.readers import model_revision, model_source

        info = r.info
        src = model_source(r)
        if ctx.model_arg is not None:
            src = str(ctx.model_arg) if isinstance(ctx.model_arg, (str, os.PathLike)) else (
                str(getattr(getattr(ctx.model_arg, "cfg", None), "model_name", type(ctx.model_arg).__name__)))
        meta["model"] = src or "not recorded in study.json"
        if "model" in r.study and isinstance(r.study["model"], dict):
            meta["model shape"] = ", ".join(f"{k} {v}" for k, v in r.study["model"].items())
        meta["revision"] = model_revision(r) or "not recorded (final weights)"
        prompts = r.study.get("prompts")
        task = ctx.task or info.get("task") or info.get("prompts")
        if isinstance(task, str) and (task == prompts or "<" in task):  # a fingerprint or a function name
            task = None
        p = ctx.prompts_arg
        desc = []
        if task:
            desc.append(f"task {task}")
        if r.study.get("n_items"):
            desc.append(f"{r.study['n_items']} items")
        if p is not None:
            desc.append(f"{len(p)} items given, competitors {', '.join(p.competitor_names)}")
        if prompts:
            desc.append(f"fingerprint {prompts}" if len(str(prompts)) == 16 else f"{prompts}")
        meta["prompts"] = "; ".join(desc) or "not recorded"
        meta["seed"] = info.get("seed", "not recorded")
        for key in ("rule", "svd", "mode", "truncation"):
            if r.study.get(key) is not None:
                meta[key] = r.study[key]
        if info.get("command"):
            meta["study made by"] = info["command"]
    meta["mechtrunc version"] = _version()
    meta["report made by"] = command
    meta["report written"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if getattr(r, "incomplete", None):
        meta["status"] = "INCOMPLETE: " + r.incomplete
    return meta


def _toy_command(r: ToyRun) -> str:
    from mechtrunc.models.toy_training import PRESETS

    t = r.train
    name = t.get("preset", "custom")
    base = PRESETS.get(name, {})
    flags = {"alpha": "--alpha", "k": "--k", "seq_len": "--seq-len", "d_model": "--d-model", "steps": "--steps",
             "batch_size": "--batch-size", "lr": "--lr", "optimizer": "--optimizer", "eval_every": "--eval-every",
             "seed": "--seed"}
    parts = ["mechtrunc", "toy", "train", "--out", str(r.directory)]
    if name in PRESETS:
        parts += ["--preset", name]
    for key, flag in flags.items():
        if key in t and (key not in base or base[key] != t[key]) and not (key == "seed" and t[key] == 0):
            parts += [flag, str(t[key])]
    return " ".join(shlex.quote(p) for p in parts) + "   (equivalent; reconstructed from config.json)"


def _title(r) -> str:
    name = Path(r.directory).resolve().name
    return {"toy": f"Toy run report: {name}", "memory": f"Associative-memory run report: {name}",
            "lm": f"Language-model run report: {name}",
            "truncation": f"Truncation study report: {name}",
            "checkpoints": f"Checkpoint study report: {name}",
            "circuits": f"Circuits-over-training report: {name}"}[r.kind]


def build_report(
    result, *, model=None, prompts=None, task: str | None = None, examples: int = 3, device: str = "cpu",
    progress: bool = True, command: str | None = None,
) -> Report:
    """A :class:`Report` of a result read with :func:`read_result` (no file written)."""
    ctx = Context(result, model_arg=model, prompts_arg=prompts, task=task, examples=examples, device=device)
    command = command or _python_command(result, model, prompts, task)
    builders = _sections()[result.kind]
    rep = Report(_title(result), result.kind, source=str(result.directory))
    bar = progress_bar(len(builders), "report", "section", enabled=progress)
    sections = []
    for b in builders:
        bar.set_postfix_str(b.__name__.replace("_section", ""))
        out = b(ctx)
        for sec in (out if isinstance(out, list) else [out]):
            if sec is not None:
                sections.append(sec)
        bar.update(1)
    bar.close()
    rep.meta = _meta(ctx, command)
    if ctx.model_missing:
        rep.meta["model-based sections"] = "missing: " + ctx.model_missing
    lead = []
    if getattr(result, "incomplete", None):
        what = "run" if result.kind in ("toy", "memory", "lm") else "study"
        lead.append(note(fragment("<b>Incomplete {}.</b> {}", what, result.incomplete), "warning"))
    if ctx.model_missing:
        lead.append(note(fragment("<b>Some sections are missing:</b> {}", ctx.model_missing), "warning"))
    for n in ctx.notes:
        lead.append(note(fragment("{}", n), "warning"))
    if lead and sections:
        sections[0].parts[:0] = lead
    for s in sections:
        rep.add(s)
    return rep


def _python_command(result, model, prompts, task) -> str:
    args = [repr(str(result.directory))]
    if model is not None:
        args.append(f"model={model!r}" if isinstance(model, (str, os.PathLike)) else "model=<model object>")
    if prompts is not None:
        args.append("prompts=<PromptSet>")
    if task is not None:
        args.append(f"task={task!r}")
    return f"mechtrunc.write_report({', '.join(args)})"


def write_report(
    path: str | os.PathLike, out: str | os.PathLike | None = None, *, model=None, prompts=None,
    task: str | None = None, examples: int = 3, device: str = "cpu", progress: bool = True,
    command: str | None = None,
) -> Report:
    """Write the HTML report of the result directory ``path`` (a toy run, an associative-memory run,
    a language-model run, a truncation study or a checkpoint study) to ``out`` (default
    ``path/report.html``) and return it.

    Args:
        model: for studies, the model (object, directory or hub id) when ``study.json`` does not
            record a loadable one; model-based sections are skipped (with a note) without it.
        prompts, task: the prompt set of a study's model-based sections, or the task to rebuild
            it (``"ioi"``, ``"factual"``, a CSV/JSONL file); default: what ``study.json`` records.
        examples: prompts shown in the example sections of a truncation study.
        command: the command line recorded in the report (default: this Python call).

    Raises:
        NotAResultError (a ValueError): ``path`` is not a result directory (missing, a file,
            unknown content, or a study with no finished row).
    """
    result = read_result(path)
    if out is not None and Path(out).is_dir():
        raise NotAResultError(f"--out {str(out)!r} is a directory; give the HTML file to write")
    rep = build_report(result, model=model, prompts=prompts, task=task, examples=examples, device=device,
                       progress=progress, command=command)
    rep.save(Path(out) if out is not None else Path(path) / "report.html")
    return rep

