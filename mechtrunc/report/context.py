"""What a section builder gets: the result read from disk, the model and prompts (loaded lazily,
only by sections that need them), options, and the reason when the model cannot be loaded."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mechtrunc._choices import task_names

__all__ = ["Context", "visible_token", "token_strings"]


def visible_token(s: str) -> str:
    """A token string that stays readable in a view: newline, tab and a lone space made visible."""
    s = s.replace("\n", "⏎").replace("\t", "⇥")
    if s == " ":
        return "␣"
    if s == "":
        return "∅"
    return s


def token_strings(model, ids) -> list[str]:
    """Readable strings for token ids: the model's tokenizer when it has one."""
    tok = getattr(model, "tokenizer", None)
    ids = [int(i) for i in ids]
    if tok is None:
        return [str(i) for i in ids]
    return [visible_token(tok.decode([i])) for i in ids]


@dataclass
class Context:
    result: object
    model_arg: object = None  # a model object, a directory / hub id, or None (from study.json)
    prompts_arg: object = None  # a PromptSet, or None
    task: str | None = None  # "ioi", "factual" or a prompt file, for studies
    examples: int = 3
    device: str = "cpu"
    notes: list = field(default_factory=list)
    _model: object = None
    _model_tried: bool = False
    model_missing: str | None = None  # why model-based sections are absent
    _prompts: object = None

    @property
    def kind(self) -> str:
        return self.result.kind

    # ------------------------------------------------------------------------------------
    def model(self):
        """The model, or None with :attr:`model_missing` saying why."""
        if self._model_tried:
            return self._model
        self._model_tried = True
        try:
            self._model = self._load_model()
        except Exception as e:  # any failure: the table sections still render
            self._model = None
            self.model_missing = f"the model could not be loaded: {type(e).__name__}: {e}"
        return self._model

    def _load_model(self):
        r = self.result
        if self.kind == "memory":
            return r.load()
        if self.kind == "lm":  # the final (or last saved) checkpoint
            from mechtrunc.models import hf
            from mechtrunc.models.lm_run import LMRunDirectory

            return hf.load_model(LMRunDirectory(r.directory).step_path(r.steps[-1]), device=self.device,
                                 local_files_only=True)
        if self.kind == "toy":
            if self.model_arg is not None and not isinstance(self.model_arg, (str, os.PathLike)):
                return self.model_arg
            model, _, _ = r.load(device=self.device)
            return model
        if self.model_arg is not None and not isinstance(self.model_arg, (str, os.PathLike)):
            return self.model_arg
        from mechtrunc.report.readers import model_revision, model_source

        source = str(self.model_arg) if self.model_arg is not None else model_source(r)
        if source is None:
            self.model_missing = ("study.json does not record which model the study ran on; pass it with "
                                  "`mechtrunc report DIR --model ID_OR_DIR` (or model= in Python)")
            return None
        from mechtrunc.models import hf

        revision = None if self.model_arg is not None else model_revision(r)
        if Path(source).expanduser().is_dir():
            revision = None
        return hf.load_model(source, revision=revision, device=self.device, local_files_only=True)

    def prompts(self):
        """The study's prompt set (for model-based sections), or None with a reason."""
        if self._prompts is not None:
            return self._prompts
        if self.prompts_arg is not None:
            self._prompts = self.prompts_arg
            return self._prompts
        if self.kind == "lm":  # several prompt sets: sections build theirs (mechtrunc.studies.lm.lm_study_prompts)
            return None
        model = self.model()
        if model is None:
            return None
        if self.kind == "toy":
            _, cfg, task = self.result.load()
            self._prompts = task.test_set(cfg.test_size, seed=cfg.seed + 10_000).to_prompts()
            return self._prompts
        info = getattr(self.result, "info", {})
        task = self.task or info.get("task")
        saved = self.result.study.get("prompts")
        if task is None and isinstance(saved, str) and (saved in task_names("prompts") or Path(saved).is_file()):
            task = saved
        if task is None:
            self.model_missing = ("study.json does not record the prompt task; pass it with "
                                  f"`mechtrunc report DIR --task {'|'.join(task_names('prompts'))}|FILE` (or prompts= "
                                  "in Python)")
            return None
        from mechtrunc.report.readers import model_source
        from mechtrunc.models.lm.prompts import prompts_for_model

        source = self.model_arg if isinstance(self.model_arg, (str, os.PathLike)) else model_source(self.result)
        try:  # a language-model run's study ran on the run's own prompts
            self._prompts = prompts_for_model(source, task, model.tokenizer, n=int(info.get("n", 200)),
                                              seed=int(info.get("seed", 0)))
        except Exception as e:
            self.model_missing = f"the prompts could not be rebuilt from task {task!r}: {e}"
            return None
        fp = _fingerprint(self._prompts)
        if fp is not None and isinstance(saved, str) and len(saved) == 16 and fp != saved:
            self.notes.append(f"the prompts rebuilt from task {task!r} differ from the study's (fingerprint {fp} vs "
                              f"{saved}): the example sections use them anyway")
        return self._prompts

    def model_and_prompts(self):
        m = self.model()
        p = self.prompts() if m is not None else None
        return (m, p) if m is not None and p is not None else (None, None)


def _fingerprint(prompts):
    from mechtrunc.studies.store import prompts_fingerprint  # the studies' own: the comparison is exact

    return prompts_fingerprint(prompts)
