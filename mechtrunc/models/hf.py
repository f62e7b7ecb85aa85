"""Pythia (and other Hugging Face causal LMs) as TransformerLens bridges, checkpoints included.

- :data:`PYTHIA_SIZES`, :func:`pythia_steps`, :func:`check_step`: the Pythia suite's shapes and
  its 154 training checkpoints (hub revisions ``step{N}``).
- :func:`load_model`: a ``TransformerBridge`` in eval mode on the **raw** Hugging Face weights
  (no LayerNorm folding, no weight centring: LASER truncates raw weights), from a hub id at an
  optional checkpoint step or from a directory written by ``save_pretrained``.  The Hugging Face
  model and tokenizer are loaded here and handed to ``TransformerBridge.boot_transformers``, so
  the bridge itself never calls the hub.  A model that is neither cached nor downloadable raises
  :class:`ModelNotAvailableError` within seconds (no long retry loop when the hub is unreachable).
- :func:`check_dtype`, :func:`pythia_size`, :func:`looks_like_path`: the checks
  :func:`load_model` applies, for callers that validate before any work (checkpoint studies).

Random Pythia-shaped models to exercise this path offline are built by
:mod:`mechtrunc.models.testing` (``build_random_pythia``).

Why this module is over 400 lines: loading is one concept with many failure modes, each with
its own actionable message (hub unreachable, offline mode, a cache holding only ``step{N}``
revisions, a directory without tokenizer, device maps); splitting them apart would scatter
that one decision path.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

import torch

from mechtrunc._choices import STEPS as _STEPS
from mechtrunc._choices import cache_root, check_device, check_step, is_pythia, looks_like_path, pythia_steps
from mechtrunc._progress import third_party_bars_off

__all__ = [
    "PYTHIA_SIZES", "PythiaSize", "ModelNotAvailableError", "pythia_steps", "check_step", "is_pythia",
    "pythia_config", "pythia_size", "load_model", "free_model", "tokenizer", "tokenizer_dir", "check_dtype",
    "looks_like_path", "PYTHIA_TOKENIZER_JSON",
]

#: Pythia's GPT-NeoX-20B BPE tokenizer, shipped with the package (Apache-2.0, see docs/dependencies.md)
PYTHIA_TOKENIZER_JSON = Path(__file__).resolve().parents[1] / "data" / "gpt_neox_20b_tokenizer.json"


class PythiaSize(NamedTuple):
    """Shape of one Pythia model (``d_mlp = 4 d_model``, ``d_head = d_model / n_heads``)."""

    n_layers: int
    d_model: int
    n_heads: int
    vocab_size: int = 50304  # padded embedding size (the tokenizer has 50280 tokens)

    @property
    def d_mlp(self) -> int:
        return 4 * self.d_model

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


#: The ten Pythia sizes (also the ``-deduped`` models).  Layers / d_model / heads from the Pythia
#: paper; the embedding sizes of 6.9b (50432) and 12b (50688) are the ones that reproduce the
#: published total parameter counts (the others use 50304).
PYTHIA_SIZES: dict[str, PythiaSize] = {
    "14m": PythiaSize(6, 128, 4),
    "31m": PythiaSize(6, 256, 8),
    "70m": PythiaSize(6, 512, 8),
    "160m": PythiaSize(12, 768, 12),
    "410m": PythiaSize(24, 1024, 16),
    "1b": PythiaSize(16, 2048, 8),
    "1.4b": PythiaSize(24, 2048, 16),
    "2.8b": PythiaSize(32, 2560, 32),
    "6.9b": PythiaSize(32, 4096, 32, 50432),
    "12b": PythiaSize(36, 5120, 40, 50688),
}

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


class ModelNotAvailableError(ValueError):
    """The requested model (or checkpoint revision) is neither on disk nor downloadable."""


def _size_key(size: str) -> str:
    key = str(size).lower().rsplit("/", 1)[-1]
    key = key.removeprefix("pythia-").removesuffix("-v0").removesuffix("-deduped")
    if key not in PYTHIA_SIZES:
        raise ValueError(f"unknown Pythia size {size!r}; valid sizes: {', '.join(PYTHIA_SIZES)}")
    return key


def pythia_size(size: str) -> PythiaSize:
    """The shape of a Pythia size or model id (``"70m"``, ``"pythia-160m"``,
    ``"EleutherAI/pythia-410m-deduped"``); ValueError naming the valid sizes otherwise."""
    return PYTHIA_SIZES[_size_key(size)]


def pythia_config(size: str = "70m", **overrides):
    """A ``GPTNeoXConfig`` shaped like the given Pythia size (parallel attention and MLP,
    rotary on 25% of each head's dimensions, LayerNorm, untied unembedding, ``d_mlp = 4 d``,
    context 2048), with ``GPTNeoXConfig`` keyword overrides (``hidden_size`` without
    ``intermediate_size`` keeps ``d_mlp = 4 d``)."""
    from transformers import GPTNeoXConfig

    s = pythia_size(size)
    args = dict(
        vocab_size=s.vocab_size, hidden_size=s.d_model, num_hidden_layers=s.n_layers,
        num_attention_heads=s.n_heads, intermediate_size=s.d_mlp, rotary_pct=0.25,
        rotary_emb_base=10000, max_position_embeddings=2048, use_parallel_residual=True,
        tie_word_embeddings=False, hidden_act="gelu", layer_norm_eps=1e-5, initializer_range=0.02,
        attention_dropout=0.0, hidden_dropout=0.0, bos_token_id=0, eos_token_id=0,
    )
    if "hidden_size" in overrides and "intermediate_size" not in overrides:
        args["intermediate_size"] = 4 * int(overrides["hidden_size"])
    args.update(overrides)
    if args["hidden_size"] % args["num_attention_heads"]:
        raise ValueError(
            f"hidden_size {args['hidden_size']} is not divisible by num_attention_heads {args['num_attention_heads']}"
        )
    return GPTNeoXConfig(**args)


# ----------------------------------------------------------------------------------------
# Pythia's tokenizer, offline
# ----------------------------------------------------------------------------------------
def tokenizer_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Pythia's tokenizer (GPT-NeoX-20B BPE, shipped in the package) as a Hugging Face tokenizer
    directory, written once (``save_pretrained``) under ``cache_dir`` (default: see
    ``MECHTRUNC_CACHE``; ``~/.cache/mechtrunc``).  A bridge boots offline only from a tokenizer
    that was loaded from disk, hence the directory.  No network."""
    import hashlib

    from transformers import PreTrainedTokenizerFast

    data = PYTHIA_TOKENIZER_JSON.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:12]
    out = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    out = out / f"gpt-neox-20b-{digest}"
    if (out / "tokenizer_config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=out.parent))
    eot = "<|endoftext|>"  # Pythia's bos, eos and unk token (id 0)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(PYTHIA_TOKENIZER_JSON), bos_token=eot, eos_token=eot,
                                  unk_token=eot)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(out)  # atomic: a concurrent writer either wins or finds the finished directory
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "tokenizer.json").is_file():
            raise
    return out


def tokenizer(name: str | None = None, cache_dir: str | os.PathLike | None = None):
    """A ready Hugging Face tokenizer.

    ``name=None``, ``"pythia"`` or any Pythia hub id (``EleutherAI/pythia-160m-deduped``...):
    Pythia's GPT-NeoX-20B tokenizer from the copy shipped in the package, offline (loaded from
    :func:`tokenizer_dir`, so it can be handed to ``load_model(..., tokenizer=)`` and to
    ``TransformerBridge.boot_transformers``).  Any other name: a local tokenizer directory, or a
    hub id loaded from the local Hugging Face cache, else the hub; a tokenizer that is neither
    raises :class:`ModelNotAvailableError`.
    """
    from transformers import AutoTokenizer

    if name is None or str(name).lower() == "pythia" or is_pythia(str(name)):
        return AutoTokenizer.from_pretrained(str(tokenizer_dir(cache_dir)))
    src = str(name)
    local = Path(src).expanduser()
    if local.is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(local))
        except (OSError, ValueError) as e:
            raise ModelNotAvailableError(f"directory {str(local)} holds no readable tokenizer: {e}") from e
    if looks_like_path(src):
        raise ModelNotAvailableError(f"no such tokenizer directory: {src}")
    try:
        return AutoTokenizer.from_pretrained(src, local_files_only=True)
    except OSError as e:
        cache_err = e
    if _offline_env():
        raise _not_available(src, None, "offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)", cache_err)
    if not _hub_reachable():
        raise _not_available(src, None, f"the Hugging Face hub ({_hub_endpoint()}) is unreachable", cache_err)
    try:
        return AutoTokenizer.from_pretrained(src)
    except OSError as e:
        raise _not_available(src, None, "the hub could not provide it", e) from e


# ----------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------
def check_dtype(dtype) -> torch.dtype:
    """``None`` (float32), a ``torch.dtype`` or its name (``"float16"``, ``"bf16"``...) as a
    ``torch.dtype``; ValueError naming the valid choices otherwise."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: float32, float16, bfloat16 (or a torch.dtype)")
    return _DTYPES[key]


def _offline_env() -> bool:
    truthy = lambda v: str(v).strip().upper() in ("1", "ON", "YES", "TRUE")
    if truthy(os.environ.get("HF_HUB_OFFLINE", "")) or truthy(os.environ.get("TRANSFORMERS_OFFLINE", "")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return False


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT).rstrip("/")
    except Exception:  # pragma: no cover
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _hub_reachable(timeout: float = 4.0) -> bool:
    """One HEAD request to the hub endpoint (proxies from the environment honoured), in a
    daemon thread so a hanging DNS lookup cannot block for longer than ``timeout``."""
    result: list[bool] = []

    def probe():
        try:
            import httpx

            httpx.head(_hub_endpoint(), timeout=timeout, follow_redirects=False)
            result.append(True)
        except Exception:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return bool(result and result[0])


def _hf_home() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return os.environ.get("HF_HOME", "~/.cache/huggingface")


def _not_available(name: str, revision: str | None, why: str, cause: Exception | None = None) -> ModelNotAvailableError:
    rev = revision or "main"
    rev_arg = f" --revision {revision}" if revision else ""
    msg = (
        f"model {name!r} at revision {rev!r} is not available: {why}. "
        f"It is not in the local Hugging Face cache ({_hf_home()}). To make it available, either "
        f"(1) on a machine with internet run `huggingface-cli download {name}{rev_arg}` "
        f"(or `hf download {name}{rev_arg}`) and copy that Hugging Face cache here, pointing HF_HOME "
        f"(or HF_HUB_CACHE) at it; or (2) save the model and its tokenizer with save_pretrained "
        f"(AutoModelForCausalLM.from_pretrained({name!r}{', revision=' + repr(revision) if revision else ''})"
        f".save_pretrained(DIR), same for AutoTokenizer) and pass DIR instead of the name; or (3) set "
        f"HF_HOME to a cache that already holds it"
    )
    if cause is not None:
        msg += f". Underlying error: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    return ModelNotAvailableError(msg)


def _local_tokenizer(tok, directory: str):
    """``tok`` reloaded from a copy saved in ``directory``, unless its ``name_or_path`` already
    is a local directory: whatever reloads it by name (the bridge adds a BOS token that way)
    then finds it on disk instead of asking the hub for revision ``main``."""
    name = str(getattr(tok, "name_or_path", "") or "")
    if name and Path(name).expanduser().is_dir():
        return tok
    from transformers import AutoTokenizer

    tok.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def _load_tokenizer(source, revision, local_files_only):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source), revision=revision, local_files_only=local_files_only)


def _load_hf(source: str, revision, local_files_only: bool, model_kwargs: dict):
    """The Hugging Face model; from disk (a directory or the cache) without progress bars, from
    the hub with them (a download is worth watching)."""
    from transformers import AutoModelForCausalLM

    # from disk: no "Loading weights" bar (it would print on every checkpoint of a study)
    with third_party_bars_off() if local_files_only else contextlib.nullcontext():
        return AutoModelForCausalLM.from_pretrained(
            source, revision=revision, local_files_only=local_files_only, **model_kwargs
        )


def load_model(
    name_or_dir,
    step: int | None = None,
    revision: str | None = None,
    device: str | torch.device | None = "cpu",
    dtype=None,
    device_map=None,
    n_devices: int | None = None,
    local_files_only: bool | None = None,
    tokenizer=None,
):
    """A ``TransformerBridge`` (eval mode, raw Hugging Face weights) for a hub id or a local
    directory written by ``save_pretrained``.

    Args:
        name_or_dir: a hub id (``EleutherAI/pythia-160m``, ``...-deduped``, ``gpt2``, any
            GPT-NeoX / GPT-2 style causal LM TransformerLens supports) or a local directory
            holding the model and its tokenizer.
        step: a training step; loads the hub revision ``step{N}`` (validated for Pythia ids,
            see :func:`check_step`).  Not with ``revision`` nor with a local directory.
        revision: a hub revision (branch, tag or commit).
        device: where the model goes (ignored when ``device_map``/``n_devices`` place it).
        dtype: ``"float32"`` (default), ``"float16"``, ``"bfloat16"`` or a ``torch.dtype``.
        device_map, n_devices: split a large model across devices (accelerate), as in
            ``boot_transformers``; ``n_devices=k`` spreads it evenly over the first k GPUs.
        local_files_only: ``True``: only the local cache; ``False``: ask the hub as
            ``from_pretrained`` does (after a quick reachability check); ``None`` (default):
            use the cache when it holds the model, otherwise download if the hub is reachable.
            With ``HF_HUB_OFFLINE=1`` the hub is never asked.
        tokenizer: optional tokenizer (object or directory) to use instead of the model's own.

    Raises:
        ModelNotAvailableError: the model/revision is not cached and cannot be downloaded (hub
            unreachable or offline mode); raised within a few seconds.
        ValueError: an invalid step, dtype, or argument combination.
    """
    if step is not None and revision is not None:
        raise ValueError("give step= or revision=, not both")
    torch_dtype = check_dtype(dtype)
    if device is not None and device_map is None and n_devices is None:
        check_device(device)
    src, is_local, step, revision = _resolve_source(name_or_dir, step, revision)
    dm, model_kwargs = _placement(torch_dtype, device_map, n_devices)
    hf, tok = _load_hf_and_tokenizer(src, revision, is_local, local_files_only, tokenizer, model_kwargs)
    return _boot_bridge(hf, tok, src, is_local, revision, step, device, dm, torch_dtype)


def _resolve_source(name_or_dir, step, revision) -> tuple[str, bool, int | None, str | None]:
    """Where :func:`load_model`'s model comes from, as ``(src, is_local, step, revision)``: a
    local directory (resolved; it must hold ``config.json``; no step or revision), or a hub id
    whose ``step`` (a Pythia checkpoint for Pythia ids, else an integer >= 0) becomes the
    revision ``step{N}``.  A path to nothing is refused."""
    src = str(name_or_dir)
    local = Path(src).expanduser()
    if local.is_dir():
        if step is not None or revision is not None:
            raise ValueError(
                f"{src!r} is a local directory, which holds a single checkpoint: step=/revision= "
                "only apply to hub ids"
            )
        src = str(local.resolve())
        if not (local / "config.json").is_file():
            raise ModelNotAvailableError(
                f"directory {src!r} holds no config.json: write it with model.save_pretrained(DIR) "
                "and tokenizer.save_pretrained(DIR)"
            )
        return src, True, step, revision
    if looks_like_path(src):
        raise ModelNotAvailableError(f"no such model directory: {src!r}")
    if step is not None:
        if is_pythia(src):
            step = check_step(step)
        else:
            try:
                step = int(step)
            except (TypeError, ValueError):
                raise ValueError(f"step must be an integer, got {step!r}") from None
            if step < 0:
                raise ValueError(f"step must be >= 0, got {step}")
        revision = f"step{step}"
    return src, False, step, revision


def _placement(torch_dtype: torch.dtype, device_map, n_devices: int | None) -> tuple[dict | None, dict]:
    """``(device map or None, from_pretrained keyword arguments)``: the dtype, and with
    ``device_map``/``n_devices`` the map and memory limits TransformerLens resolves for them."""
    if n_devices is not None or device_map is not None:
        from transformer_lens.utilities.multi_gpu import resolve_device_map

        dm, max_memory = resolve_device_map(n_devices, device_map, None, None)
    else:
        dm, max_memory = None, None
    model_kwargs: dict = {"dtype": torch_dtype}
    if dm is not None:
        model_kwargs["device_map"] = dm
    if max_memory is not None:
        model_kwargs["max_memory"] = max_memory
    return dm, model_kwargs


def _load_hf_and_tokenizer(src: str, revision, is_local: bool, local_files_only: bool | None, tokenizer,
                           model_kwargs: dict):
    """The Hugging Face model and its tokenizer (``tokenizer``, given as an object or a
    directory, replaces the model's own): from a local directory, or from the local cache first
    and then the hub (when ``local_files_only`` allows, offline mode is off and the hub answers);
    :class:`ModelNotAvailableError` saying why otherwise."""

    def load(lfo: bool):
        if tokenizer is None:
            tok = _load_tokenizer(src, revision, lfo)
        elif isinstance(tokenizer, (str, Path)):
            tok = _load_tokenizer(tokenizer, None, lfo or Path(tokenizer).expanduser().is_dir())
        else:
            tok = tokenizer
        return _load_hf(src, revision, lfo, model_kwargs), tok

    if is_local:
        try:
            return load(True)
        except OSError as e:
            raise ModelNotAvailableError(
                f"could not load the model and tokenizer from directory {src!r}: {e}. The directory must "
                "hold both, written with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR) "
                "(or pass tokenizer=)"
            ) from e
    cache_err: OSError | None = None
    if local_files_only is not False:
        try:
            return load(True)  # the local cache first: fast, and no network
        except OSError as e:
            cache_err = e
    if local_files_only is True:
        raise _not_available(src, revision, "local_files_only=True was given", cache_err) from cache_err
    if _offline_env():
        raise _not_available(src, revision, "offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)",
                             cache_err) from cache_err
    if not _hub_reachable():
        raise _not_available(src, revision, f"the Hugging Face hub ({_hub_endpoint()}) is unreachable",
                             cache_err) from cache_err
    try:
        return load(False)
    except OSError as e:  # unknown repo or revision, gated model, ...
        raise _not_available(src, revision, "the hub could not provide it", e) from e


def _boot_bridge(hf, tok, src: str, is_local: bool, revision, step, device, dm, torch_dtype: torch.dtype):
    """The ``TransformerBridge`` (eval mode) around the loaded Hugging Face model ``hf``, on
    ``device`` unless the device map ``dm`` placed it, recording the revision and step."""
    from transformer_lens import TransformerBridge

    from mechtrunc.core.stacks import hf_architecture

    hf_architecture(hf)  # an architecture mechtrunc does not know is refused before the bridge boots
    if dm is None and device is not None:
        hf = hf.to(device)
    hf.eval()
    boot_device = None if dm is not None else (device if device is not None else str(next(hf.parameters()).device))
    try:
        # The bridge may reload the tokenizer by its name_or_path (to add a BOS token) without a
        # revision: a hub id then needs revision "main", absent from a cache that holds only
        # step{N} revisions.  So the tokenizer is handed over from a local copy.
        with tempfile.TemporaryDirectory(prefix="mechtrunc_tok_") as tok_dir:
            tok = _local_tokenizer(tok, tok_dir)
            bridge = TransformerBridge.boot_transformers(src, hf_model=hf, tokenizer=tok, device=boot_device,
                                                         dtype=torch_dtype)
            bridge.tokenizer.name_or_path = src if not is_local else bridge.tokenizer.name_or_path
    except OSError as e:  # a file the bridge wanted is missing (offline, partial cache...)
        raise _not_available(src, revision, "TransformerBridge could not boot from it", e) from e
    bridge.eval()
    bridge.cfg.revision = revision  # type: ignore[attr-defined]
    if step is not None:
        bridge.cfg.checkpoint_value = step  # type: ignore[attr-defined]
        if is_pythia(src):
            bridge.cfg.checkpoint_index = _STEPS.index(step)  # type: ignore[attr-defined]
    return bridge


def free_model(model) -> None:
    """Drop what this process caches for ``model`` and return freed memory to the allocator
    (the caller must also drop its own references)."""
    model.__dict__.pop("_mechtrunc_adapter", None)  # drops the SVD cache with it
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

