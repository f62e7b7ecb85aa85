"""Small offline models a user builds to try mechtrunc without the hub (demos, benchmarks,
their own tests).

- :func:`word_level_tokenizer_dir`: a word-level tokenizer saved with ``save_pretrained``.
- :func:`build_random_pythia`: a randomly initialised Pythia-shaped GPT-NeoX plus tokenizer.
- :func:`recall_tokenizer_dir`, :func:`train_neox_recall`: a small GPT-NeoX trained on the noisy
  in-context recall task (the paper's toy phenomenon on a Pythia architecture).
- :func:`fake_hub_cache`: a Hugging Face hub cache directory (``models--ORG--NAME`` with
  ``refs/step{N}`` and ``snapshots/<hash>/``) holding given local models as revisions, exactly
  as ``huggingface-cli download ID --revision stepN`` leaves it, to run hub ids (a checkpoint
  study of ``EleutherAI/pythia-70m`` steps, say) offline.

Helpers that only this repository's tests need live in ``tests/helpers.py``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from mechtrunc._checks import check_choice
from mechtrunc._progress import progress_bar, third_party_bars_off
from mechtrunc.models.hf import pythia_config

__all__ = [
    "word_level_tokenizer_dir", "build_random_pythia", "recall_tokenizer_dir", "train_neox_recall",
    "fake_hub_cache", "tiny_bridge", "TINY_ARCHITECTURES",
]


# ----------------------------------------------------------------------------------------
# random Pythia-shaped models
# ----------------------------------------------------------------------------------------
def word_level_tokenizer_dir(
    out_dir: str | os.PathLike, tokens: Sequence[str], unk_token: str | None = None,
    special_token: str | None = None,
) -> Path:
    """Save a word-level tokenizer (token id = index in ``tokens``, split on whitespace) with
    ``save_pretrained`` and return the directory.  Bridges boot only from a tokenizer on disk,
    so offline models built from scratch (tests, benchmarks, recall-trained models) carry one.
    ``unk_token`` defaults to the first token; ``special_token`` becomes the eos and pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("tokens must be distinct")
    unk = unk_token if unk_token is not None else tokens[0]
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = {"eos_token": special_token, "pad_token": special_token} if special_token is not None else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, **extra)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


def build_random_pythia(
    size_or_config="70m",
    tokenizer_dir=None,
    out_dir=None,
    seed: int = 0,
    n_layers: int | None = None,
    vocab_size: int | None = None,
) -> Path:
    """Write a randomly initialised Pythia-shaped ``GPTNeoXForCausalLM`` and a tokenizer with
    ``save_pretrained``; return the directory (loadable with :func:`load_model`).

    Args:
        size_or_config: a Pythia size (``"70m"``, ``"pythia-160m"``...), a dict of
            ``GPTNeoXConfig`` overrides of the 70m shape (e.g. ``{"hidden_size": 128,
            "num_attention_heads": 4}``), or a ``GPTNeoXConfig``.
        tokenizer_dir: the tokenizer: a Hugging Face tokenizer directory, a ``tokenizer.json``
            file (e.g. the GPT-NeoX-20B BPE Pythia uses) or a tokenizer object.
        out_dir: where to write (created); default a new temporary directory.
        seed: torch seed of the initialisation (normal, std 0.02, as Hugging Face does).
        n_layers: override the number of layers.
        vocab_size: embedding rows; default the size's own (50304 for most Pythias) when the
            tokenizer fits, else the tokenizer's length rounded up to a multiple of 128.
    """
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    if tokenizer_dir is None:
        raise ValueError("build_random_pythia needs tokenizer_dir= (a tokenizer directory, tokenizer.json or object)")
    if isinstance(tokenizer_dir, (str, Path)):
        p = Path(tokenizer_dir).expanduser()
        if p.is_file():
            tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
        elif p.is_dir():
            tok = AutoTokenizer.from_pretrained(str(p))
        else:
            raise ValueError(f"tokenizer_dir {str(p)!r} is neither a directory nor a tokenizer.json file")
    else:
        tok = tokenizer_dir
    if tok.eos_token is None and "<|endoftext|>" in tok.get_vocab():
        # Pythia's own tokenizer uses <|endoftext|> (id 0) as bos, eos and unk
        tok.bos_token = tok.eos_token = tok.unk_token = "<|endoftext|>"
    n_tok = len(tok)

    if isinstance(size_or_config, GPTNeoXConfig):
        cfg = GPTNeoXConfig.from_dict(size_or_config.to_dict())
    elif isinstance(size_or_config, dict):
        overrides = dict(size_or_config)
        size = overrides.pop("size", "70m")
        cfg = pythia_config(size, **overrides)
    else:
        cfg = pythia_config(str(size_or_config))
    if n_layers is not None:
        if int(n_layers) < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        cfg.num_hidden_layers = int(n_layers)
    if vocab_size is not None:
        cfg.vocab_size = int(vocab_size)
    elif cfg.vocab_size < n_tok:
        cfg.vocab_size = -(-n_tok // 128) * 128
    if cfg.vocab_size < n_tok:
        raise ValueError(f"vocab_size {cfg.vocab_size} is smaller than the tokenizer's {n_tok} tokens")
    eos = tok.eos_token_id
    if eos is not None:
        cfg.bos_token_id = cfg.eos_token_id = int(eos)

    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="random_pythia_"))
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(cfg).eval()
    with third_party_bars_off():
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------------------
# the toy phenomenon on a Hugging Face GPT-NeoX
# ----------------------------------------------------------------------------------------
def recall_tokenizer_dir(out_dir: str | os.PathLike, itos: Sequence[str] | None = None) -> Path:
    """Save a word-level tokenizer whose tokens are the recall task's characters (token id =
    index in ``itos``, default the 65 tiny-Shakespeare characters) with ``save_pretrained``.
    It exists so a recall-trained Hugging Face model directory carries a tokenizer (the bridge
    needs one); prompts are built from token ids, not text."""
    if itos is None:
        from mechtrunc.tasks.recall import char_stats

        itos = char_stats().itos
    tokens: list[str] = []
    for i, ch in enumerate(itos):  # whitespace characters and repeats get a <c{i}> name
        tokens.append(ch if ch not in tokens and ch.strip() else f"<c{i}>")
    return word_level_tokenizer_dir(out_dir, tokens)


def train_neox_recall(
    out_dir: str | os.PathLike | None = None,
    *,
    task_config=None,
    n_layers: int = 2,
    d_model: int = 128,
    n_heads: int = 4,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    callback: Callable[[int, object], None] | None = None,
    **config_overrides,
):
    """Train a small Pythia-style Hugging Face ``GPTNeoXForCausalLM`` (parallel attention and
    MLP, rotary on 25% of each head's dimensions, LayerNorm, untied unembedding, ``d_mlp = 4 d``)
    on noisy in-context recall with the paper's masked loss (cross-entropy at trigger positions
    seen for the second time or later), AdamW, batches a pure function of ``(seed, step)``.
    The defaults (d_model 128, T = 64, batch 64, lr 1e-3, 600 steps) show the paper's effect:
    removing the last MLP takes clean accuracy from about 0.5 to about 1.0 (see docs/pythia.md).

    With ``out_dir`` the model and a word-level tokenizer over the task's characters are saved
    with ``save_pretrained`` (loadable with :func:`mechtrunc.models.hf.load_model`).
    ``callback(step, model)`` is called after each step (e.g. to evaluate now and then; the
    model is in training mode, dropout is zero).  Extra keyword arguments override the
    ``GPTNeoXConfig``.

    Returns ``(hf_model, task, history)`` with ``history`` a list of ``(step, loss)``.
    """
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from mechtrunc.core.metrics import masked_cross_entropy
    from mechtrunc.tasks.recall import RecallConfig, RecallTask
    from mechtrunc.models.toy_training import batch_seed

    cfg_task = task_config or RecallConfig(alpha=0.5, seq_len=64)
    task = RecallTask(cfg_task, device=device)
    args = dict(vocab_size=cfg_task.d_vocab, hidden_size=d_model, num_hidden_layers=n_layers,
                num_attention_heads=n_heads, intermediate_size=4 * d_model, rotary_pct=0.25,
                max_position_embeddings=max(cfg_task.seq_len, 64), use_parallel_residual=True,
                tie_word_embeddings=False, attention_dropout=0.0, hidden_dropout=0.0,
                bos_token_id=0, eos_token_id=0, pad_token_id=0)
    args.update(config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**args)).to(device)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    history = []
    bar = progress_bar(steps, "train", "step", enabled=progress)
    for step in range(1, steps + 1):
        batch = task.sample(batch_size, seed=batch_seed(seed, step))
        logits = model(batch.inputs).logits
        loss = masked_cross_entropy(logits, batch.targets, batch.loss_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append((step, float(loss.detach())))
        if callback is not None:
            callback(step, model)
        bar.update(1)
    bar.close()
    model.eval()
    if out_dir is not None:
        out = Path(out_dir)
        with third_party_bars_off():
            model.save_pretrained(out)
        recall_tokenizer_dir(out, task.itos)
    return model, task, history


# ----------------------------------------------------------------------------------------
# offline hub caches and checkpoint directories
# ----------------------------------------------------------------------------------------
def fake_hub_cache(cache_dir: str | os.PathLike, repo_id: str, revisions: Mapping[str, str | os.PathLike]) -> Path:
    """Write ``revisions`` (``{"step1000": DIR, ...}``, each DIR a ``save_pretrained`` model and
    tokenizer) into a Hugging Face hub cache at ``cache_dir`` (what ``HF_HUB_CACHE`` points at)
    as the repository ``repo_id``: ``models--ORG--NAME/refs/<revision>`` holds a commit hash and
    ``snapshots/<hash>/`` the files.  Only the given revisions exist (no ``main``), exactly as
    ``huggingface-cli download ID --revision stepN`` leaves a cache.  Returns the repo folder."""
    if "/" not in repo_id:
        raise ValueError(f"repo_id must be 'owner/name', got {repo_id!r}")
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "snapshots").mkdir(parents=True, exist_ok=True)
    for revision, src in revisions.items():
        commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        snap = repo / "snapshots" / commit
        if snap.exists():
            shutil.rmtree(snap)
        shutil.copytree(Path(src), snap)
        (repo / "refs" / revision).write_text(commit)
    return repo



# ----------------------------------------------------------------------------------------
# tiny random bridges (offline)
# ----------------------------------------------------------------------------------------
#: architectures :func:`tiny_bridge` builds, and the TransformerLens name each boots as
TINY_ARCHITECTURES = {"gpt_neox": "EleutherAI/pythia-70m", "gpt2": "gpt2", "gptj": "EleutherAI/gpt-j-6B",
                      "llama": "meta-llama/Llama-3.2-1B", "qwen2": "Qwen/Qwen2-0.5B"}


def tiny_bridge(arch: str, tokenizer_dir: str | os.PathLike, *, seed: int = 0, **config):
    """A tiny randomly initialised ``TransformerBridge`` booted offline: ``arch`` one of
    ``"gpt_neox"`` (Pythia-shaped; ``use_parallel_residual=False`` for sequential blocks),
    ``"gpt2"``, ``"gptj"``, ``"llama"``, ``"qwen2"`` (RMSNorm and a gated MLP of width 128;
    ``num_key_value_heads=2`` for grouped key-value heads); 3 layers, d_model 64, 4 heads,
    vocabulary 512 unless ``config``
    (Hugging Face config keyword arguments) says otherwise.  ``tokenizer_dir``: a tokenizer
    directory (e.g. :func:`word_level_tokenizer_dir`), since a bridge boots only with one."""
    from transformer_lens import TransformerBridge
    import transformers
    from transformers import AutoTokenizer

    check_choice("architecture", arch, TINY_ARCHITECTURES)
    if arch == "gpt_neox":
        kw = dict(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256,
                  rotary_pct=0.25, max_position_embeddings=64, attention_dropout=0.0, hidden_dropout=0.0)
        classes = "GPTNeoXConfig", "GPTNeoXForCausalLM"
    elif arch == "gpt2":
        kw = dict(vocab_size=512, n_embd=64, n_layer=3, n_head=4, n_positions=64, resid_pdrop=0.0,
                  embd_pdrop=0.0, attn_pdrop=0.0)
        classes = "GPT2Config", "GPT2LMHeadModel"
    elif arch == "gptj":
        kw = dict(vocab_size=512, n_embd=64, n_layer=3, n_head=4, rotary_dim=8, n_positions=64, resid_pdrop=0.0,
                  embd_pdrop=0.0, attn_pdrop=0.0)
        classes = "GPTJConfig", "GPTJForCausalLM"
    else:  # the Llama family: Llama, Qwen2
        kw = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False)
        classes = ("LlamaConfig", "LlamaForCausalLM") if arch == "llama" else ("Qwen2Config", "Qwen2ForCausalLM")
    kw.update(config)
    cfg_cls, model_cls = (getattr(transformers, c) for c in classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = model_cls(cfg_cls(**kw)).eval()
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    bridge = TransformerBridge.boot_transformers(TINY_ARCHITECTURES[arch], hf_model=hf, tokenizer=tok, device="cpu")
    return bridge.eval()
