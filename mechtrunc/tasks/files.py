"""User prompt sets from CSV or JSONL files.

Each record has a ``prompt``, an ``answer`` (exactly one token, usually with its leading space,
e.g. " Spain") and optional ``competitors`` (each exactly one token; default " the"):

- CSV: a header row with ``prompt``, ``answer`` and optionally ``competitors``, a
  ``|``-separated string (" the| John"); an empty cell means " the".
- JSONL: one object per line with ``prompt``, ``answer`` and optionally ``competitors``, a list
  of strings ([" the", " John"]) or one string, split on ``|`` like the CSV cell.

Every record must have the same number of competitors.  Other columns/fields are kept in
``meta`` as lists.  Any problem raises ValueError naming the file, the row or line, the bad
value and what would be valid.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from mechtrunc.core.prompts import PromptSet
from mechtrunc.tasks._tokens import encode, single_token_id, tokenize_prompts, tokenizer_name

__all__ = ["load_prompts"]

DEFAULT_COMPETITORS = (" the",)
_FIELDS = ("prompt", "answer", "competitors")


@dataclass
class _Record:
    where: str  # "row 3 (line 4)" or "line 5"
    prompt: str
    answer: str
    competitors: list[str]
    extra: dict


def _split_competitors(value: str | None) -> list[str]:
    if value is None or value == "":
        return list(DEFAULT_COMPETITORS)
    return value.split("|")


def _read_csv(path: Path) -> list[_Record]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = [c for c in ("prompt", "answer") if c not in fields]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; found {list(fields)}, "
                f"need 'prompt' and 'answer' (and optionally 'competitors')"
            )
        records = []
        for i, row in enumerate(reader, start=1):
            extra = {k: v for k, v in row.items() if k is not None and k not in _FIELDS}
            records.append(_Record(
                f"row {i} (line {reader.line_num})",
                row["prompt"] or "",
                row["answer"] or "",
                _split_competitors(row.get("competitors")),
                extra,
            ))
    return records


def _read_jsonl(path: Path) -> list[_Record]:
    records = []
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"line {line_no}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, {where}: invalid JSON ({e.msg}); each line must be one JSON object") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}, {where}: expected a JSON object with 'prompt' and 'answer', got {obj!r}")
            missing = [k for k in ("prompt", "answer") if k not in obj]
            if missing:
                raise ValueError(
                    f"{path}, {where}: missing field(s) {missing}; found {list(obj)}, "
                    f"need 'prompt' and 'answer' (and optionally 'competitors')"
                )
            for key in ("prompt", "answer"):
                if not isinstance(obj[key], str):
                    raise ValueError(f"{path}, {where}: {key} must be a string, got {obj[key]!r}")
            comps = obj.get("competitors")
            if comps is None or isinstance(comps, str):
                comps = _split_competitors(comps)
            elif not (isinstance(comps, list) and comps and all(isinstance(c, str) for c in comps)):
                raise ValueError(
                    f"{path}, {where}: competitors must be a non-empty list of strings or a "
                    f"'|'-separated string, got {comps!r}"
                )
            extra = {k: v for k, v in obj.items() if k not in _FIELDS}
            records.append(_Record(where, obj["prompt"], obj["answer"], list(comps), extra))
    return records


def _token_id(tokenizer, text: str, what: str, path: Path, where: str) -> int:
    tid = single_token_id(tokenizer, text)
    if tid is not None:
        return tid
    pieces = tokenizer.convert_ids_to_tokens(encode(tokenizer, text)) if text else []
    hint = " (answers and competitors usually need their leading space, e.g. ' Spain')" if text and not text[0].isspace() else ""
    raise ValueError(
        f"{path}, {where}: {what} {text!r} is not a single token under {tokenizer_name(tokenizer)} "
        f"(it encodes to {len(pieces)} tokens: {pieces}); each {what} must be exactly one known token{hint}"
    )


def _competitor_names(records: list[_Record]) -> tuple[str, ...]:
    first = records[0].competitors
    generic = tuple(f"c{j}" for j in range(len(first)))
    if any(r.competitors != first for r in records):
        return generic
    names = tuple(re.sub(r"\W+", "_", c.strip()).strip("_") or f"c{j}" for j, c in enumerate(first))
    return names if len(set(names)) == len(names) else generic


def load_prompts(path: str | os.PathLike, tokenizer) -> PromptSet:
    """A :class:`PromptSet` from a ``.csv`` or ``.jsonl`` file (see the module docstring).

    Prompts are encoded with no special tokens and right-padded; each prompt is one read item
    at its last real token.  ``competitor_names`` come from the first record's competitor
    strings (" the" -> "the"), or are "c0", "c1", ... when records use different competitors.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist (expected a .csv or .jsonl file)")
    if not path.read_text(encoding="utf-8-sig", errors="replace").strip():
        raise ValueError(f"{path}: the prompt file is empty (expected a header line 'prompt,answer' then one row "
                         "per prompt, or one JSON object per line)")
    ext = path.suffix.lower()
    if ext == ".csv":
        records = _read_csv(path)
    elif ext == ".jsonl":
        records = _read_jsonl(path)
    else:
        raise ValueError(f"{path}: unknown extension {ext!r}; valid extensions are '.csv' and '.jsonl'")
    if not records:
        raise ValueError(f"{path}: no prompts found (the file has no data rows)")

    n_comp = len(records[0].competitors)
    answers, comps = [], []
    for r in records:
        if not r.prompt.strip():
            raise ValueError(f"{path}, {r.where}: empty prompt {r.prompt!r}; every record needs a non-empty prompt")
        if len(r.competitors) != n_comp:
            raise ValueError(
                f"{path}, {r.where}: {len(r.competitors)} competitors {r.competitors}, but the first "
                f"record has {n_comp} ({records[0].competitors}); every record needs the same number"
            )
        answers.append(_token_id(tokenizer, r.answer, "answer", path, r.where))
        comps.append([_token_id(tokenizer, c, "competitor", path, r.where) for c in r.competitors])

    texts = [r.prompt for r in records]
    tokens, pos = tokenize_prompts(tokenizer, texts)
    extra_keys = list(dict.fromkeys(k for r in records for k in r.extra))
    meta = {k: [r.extra.get(k) for r in records] for k in extra_keys}
    meta.update(
        task="file",
        path=str(path),
        answer_text=[r.answer for r in records],
        competitor_texts=[list(r.competitors) for r in records],
    )
    return PromptSet(
        tokens=tokens,
        rows=torch.arange(len(records)),
        pos=pos,
        answer=torch.tensor(answers, dtype=torch.long),
        competitors=torch.tensor(comps, dtype=torch.long),
        competitor_names=_competitor_names(records),
        texts=texts,
        meta=meta,
    )
