"""Bad input, mapped: one table of user mistakes across the CLI and the Python API, the error
each gets, and one test per row.  ``docs/bad-inputs.md`` is generated from this table:

    python tests/test_bad_inputs.py          # rewrite docs/bad-inputs.md from BAD_INPUTS

and :func:`test_doc_is_up_to_date` fails when the doc and the table disagree.

A CLI row is a command line (UPPERCASE words that name a fixture below are replaced by a path);
it must exit with status 2, print ``error:`` and the expected text on stderr, and no traceback.
An API row is a Python expression evaluated with ``mt`` (mechtrunc), ``torch``, small models
(``toy``: a ToyTransformer, d_model 32, n_ctx 64, vocabulary 65; ``neox``: a 3-layer GPT-NeoX
bridge, vocabulary 512, context 64) and the files below; it must raise the given exception
type with the expected text in its message.  ``(no GPU)`` rows run as if CUDA were absent.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad-inputs.md"


@dataclass(frozen=True)
class Bad:
    where: str  # "CLI" or "API"
    given: str  # the command line (without "mechtrunc") or the Python expression
    error: str  # exception type name (API) or "exit 2" (CLI)
    message: str  # text the message must contain
    no_gpu: bool = False  # run as if CUDA were absent


def cli(given, message, **kw):
    return Bad("CLI", given, "exit 2", message, **kw)


def api(given, error, message, **kw):
    return Bad("API", given, error, message, **kw)


BAD_INPUTS: list[Bad] = [
    # ---------------------------------------------------------------- CLI: toy train / eval / demo
    cli("toy train --out OUT --alpha 1.5", "argument --alpha: expected a number in [0, 1], got '1.5'"),
    cli("toy train --out OUT --alpha half", "argument --alpha: expected a number in [0, 1], got 'half'"),
    cli("toy train --out OUT --k 0", "argument --k: expected a positive integer, got '0'"),
    cli("toy train --out OUT --k 70", "k must be between 1 and 64"),
    cli("toy train --out OUT --seq-len 1", "argument --seq-len: expected an integer >= 2, got '1'"),
    cli("toy train --out OUT --steps 2.5", "argument --steps: expected a positive integer, got '2.5'"),
    cli("toy train --out OUT --batch-size -3", "argument --batch-size: expected a positive integer, got '-3'"),
    cli("toy train --out OUT --lr nan", "argument --lr: expected a positive number, got 'nan'"),
    cli("toy train --out OUT --optimizer rmsprop", "argument --optimizer: unknown optimizer 'rmsprop'; valid optimizers: sgd, adam, adamw"),
    cli("memory dynamics --optimizer adamw", "argument --optimizer: unknown optimizer 'adamw'; valid optimizers: sgd, adam"),
    cli("patch scan TOY_RUN --level 1", "argument --level: expected a confidence level in (0, 1), got '1'"),
    cli("toy train --out OUT --preset huge", "unknown preset 'huge'; valid presets: paper, cpu"),
    cli("toy train --out OUT --precision fp8", "argument --precision: invalid choice: 'fp8'"),
    cli("toy train --out OUT --device gpu", "argument --device: expected a torch device (cpu, cuda, cuda:N or mps), got 'gpu'"),
    cli("toy train --out OUT --device cuda --steps 1", "device 'cuda' was requested but no CUDA GPU is available", no_gpu=True),
    cli("toy train --steps 10", "the following arguments are required: --out"),
    cli("toy train --out OUT --bogus-flag", "unrecognized arguments: --bogus-flag"),
    cli("toy train --out RUN_OTHER_CONFIG --d-model 16 --seq-len 16 --steps 2",
        "holds a different run (alpha: 0.1 there, 0.5 asked; steps: 3 there, 2 asked); nothing was changed"),
    cli("toy train --out RUN_OTHER_CONFIG --d-model 16 --seq-len 16 --steps 2 --alpha 0.1 --extend",
        "(steps: 3 there, 2 asked); nothing was changed: --extend only lengthens a run"),
    cli("toy train --out RUN_OTHER_CONFIG --d-model 16 --seq-len 16 --steps 6 --alpha 0.1",
        "(steps: 3 there, 6 asked); nothing was changed: add --extend (extend=True) to train this run on from step 3 to 6"),
    cli("toy train --out RUN_CORRUPT_CHECKPOINT --d-model 16 --seq-len 16 --steps 2",
        "checkpoint.pt is corrupt or unreadable"),
    cli("toy eval NO_SUCH_DIR", "model directory NO_SUCH_DIR does not exist"),
    cli("toy eval EMPTY_FILE", "is not a directory"),
    cli("toy eval CORRUPT_MODEL_DIR", "corrupt model directory"),
    cli("toy eval MODEL_WITHOUT_TRAIN_CONFIG", "holds a model but no training configuration"),
    cli("toy eval TOY_RUN --device cuda", "device 'cuda' was requested but no CUDA GPU is available", no_gpu=True),
    cli("demo --seed -1", "argument --seed: expected a non-negative integer, got '-1'"),
    cli("nope", "argument COMMAND: invalid choice: 'nope'"),
    # ---------------------------------------------------------------- CLI: pythia
    cli("pythia truncate --model EleutherAI/pythia-70m --step 1500 --out OUT", "nearest valid steps: 1000, 2000"),
    cli("pythia truncate --model ./no/such/model --out OUT", "no such model directory: './no/such/model'"),
    cli("pythia truncate --model EMPTY_DIR --out OUT", "holds no config.json"),
    cli("pythia truncate --model CORRUPT_HF_DIR --out OUT", "corrupt_hf: config.json is corrupt or unreadable"),
    cli("pythia truncate --model EleutherAI/pythia-70m --out OUT",
        "model 'EleutherAI/pythia-70m' at revision 'main' is not available: offline mode is on"),
    cli("pythia truncate --model TINY_PYTHIA --task no_such_prompts.csv --out OUT",
        "unknown task 'no_such_prompts.csv': give 'ioi', 'factual' or the path of a CSV/JSONL prompt file"),
    cli("pythia truncate --model TINY_PYTHIA --task PROMPTS_TXT --out OUT",
        "unknown extension '.txt'; valid extensions are '.csv' and '.jsonl'"),
    cli("pythia truncate --model TINY_PYTHIA --task EMPTY_CSV --out OUT", "the prompt file is empty"),
    cli("pythia truncate --model TINY_PYTHIA --task MULTI_TOKEN_ANSWER_CSV --out OUT",
        "answer ' Tegucigalpa' is not a single token"),
    cli("pythia truncate --model TINY_PYTHIA --task LONG_PROMPT_CSV --out OUT --no-progress",
        "tokens long but the model's context is 64 tokens"),
    cli("pythia truncate --model TINY_PYTHIA --layers 3 --out OUT --no-progress", "layer 3 is out of range"),
    cli("pythia truncate --model TINY_PYTHIA --keeps 1.5 --out OUT", "argument --keeps: expected a number in [0, 1], got '1.5'"),
    cli("pythia truncate --model TINY_PYTHIA --matrices mlp.W_up --out OUT",
        "unknown matrix 'mlp.W_up'; valid matrices: mlp.W_in, mlp.W_out"),
    cli("pythia truncate --model TINY_PYTHIA --n 0 --out OUT", "argument --n: expected a positive integer, got '0'"),
    cli("pythia truncate --model TINY_PYTHIA --select 0.3 --out OUT", "--select only apply with --heldout"),
    cli("pythia truncate --model TINY_PYTHIA --heldout --select 1 --out OUT",
        "--select must be a fraction in (0, 1) (the share of prompts that chooses), got 1"),
    cli("pythia truncate --model TINY_PYTHIA --heldout --budget 0.2 --out OUT",
        "--budget bounds the loss on --collateral text: give --collateral FILE"),
    cli("pythia truncate --model TINY_PYTHIA --dtype float8 --out OUT", "unknown dtype 'float8'; valid dtypes: float32"),
    cli("pythia truncate --model TINY_PYTHIA --n-devices 0 --out OUT", "argument --n-devices: expected a positive integer"),
    cli("pythia truncate --model TINY_PYTHIA --device cuda --out OUT",
        "device 'cuda' was requested but no CUDA GPU is available", no_gpu=True),
    cli("pythia truncate --model TINY_PYTHIA --out HALF_WRITTEN_STUDY --no-progress",
        "study.json is corrupt (a half-written study?)"),
    cli("pythia truncate --model TINY_PYTHIA --svd randomized --out OUT",
        "mode 'engine' computes exact decompositions; give svd='exact'"),
    cli("pythia truncate --model TINY_PYTHIA --mode fast --out OUT", "argument --mode: invalid choice: 'fast'"),
    cli("pythia checkpoints --model TINY_PYTHIA --steps 0 --mode hook --out OUT",
        "--layers, --matrices, --keeps and --mode only apply with --grid"),
    cli("memory train --out OUT --n-inputs 1", "argument --n-inputs: expected an integer >= 2, got '1'"),
    cli("memory train --out TOY_RUN --steps 5", "exists and holds no memory run (a config.json with its memory and train "
        "configurations); nothing was changed"),
    cli("memory dynamics --out TOY_RUN --steps 5", "exists and holds no `memory dynamics` run (config.json); nothing was "
        "changed"),
    cli("memory train --out OUT --embeddings sphere",
        "argument --embeddings: unknown embeddings 'sphere'; valid embeddings: gaussian, orthonormal"),
    cli("memory spectrum EMPTY_DIR --top 0", "argument --top: expected a positive integer, got '0'"),
    cli("memory spectrum NO_SUCH_DIR", "model directory NO_SUCH_DIR does not exist; give the --out directory of `mechtrunc memory train`"),
    cli("memory spectrum TOY_RUN", "toy_run is a toy run, not a linear-memory run; give the --out directory of `mechtrunc memory train`"),
    cli("memory dynamics --lr -1", "argument --lr: expected a positive number, got '-1'"),
    cli("pythia checkpoints --model TINY_PYTHIA --steps -1 --out OUT", "argument --steps: expected a non-negative integer, got '-1'"),
    cli("pythia checkpoints --model TINY_PYTHIA --out OUT", "the following arguments are required: --steps"),
    cli("pythia checkpoints --model EleutherAI/pythia-70m --steps 0 3 --out OUT", "step 3 is not a Pythia checkpoint"),
    # ---------------------------------------------------------------- CLI: lm study
    cli("lm study NO_SUCH_DIR", "NO_SUCH_DIR does not exist; give the --out directory of `mechtrunc lm train`"),
    cli("lm study EMPTY_FILE", "EMPTY_FILE is a file, not a directory"),
    cli("lm study EMPTY_DIR", "EMPTY_DIR is not a mechtrunc lm run directory (no run.json)"),
    cli("lm study UNFINISHED_LM_RUN", "has not finished training (no step200/)"),
    cli("lm study CORRUPT_LM_RUN", "run.json is not readable JSON of a run"),
    cli("lm train --preset nano --out CORRUPT_LM_RUN",
        "run.json is not readable JSON of a run (Expecting property name enclosed in double quotes: line 1 column 2 "
        "(char 1)); the run directory looks corrupt; choose another output directory or delete it (nothing was changed)"),
    cli("lm train --preset nano --out UNFINISHED_LM_RUN --steps 100 --precision bf16",
        "holds a different run (steps: 200 there, 100 asked; precision: 'fp32' there, 'bf16' asked); nothing was changed"),
    cli("lm train --preset nano --out UNFINISHED_LM_RUN --steps 300 --extend",
        "(steps: 200 there, 300 asked); nothing was changed: it cannot be extended to 300 steps, because its learning "
        "rate depends on steps"),
    cli("lm study EMPTY_DIR --n 0", "argument --n: expected a positive integer, got '0'"),
    # ---------------------------------------------------------------- CLI: lm english
    cli("lm english --out EMPTY_FILE", "--out EMPTY_FILE is a file; give a directory for the English text"),
    cli("lm english --out OUT --debs NO_SUCH_DIR", "--debs NO_SUCH_DIR is not a directory; give the directory holding the two .deb files"),
    cli("lm english --out OUT --debs EMPTY_DIR", "does not exist; the directory given as debs must hold r-cran-janeaustenr_1.0.0-1_all.deb"),
    cli("lm train --preset nano --out OUT --english-vocab 256", "--english-vocab given without --english SHARE > 0"),
    cli("lm train --preset nano --out OUT --english 0.3 --english-dir EMPTY_DIR", "holds no English text (manifest.json missing); fetch it with `mechtrunc lm english --out"),
    cli("lm train --preset nano --out OUT --english 1.5", "argument --english: expected a number in [0, 1], got '1.5'"),
    cli("lm train --preset nano --out OUT --processes 0", "argument --processes: expected a positive integer, got '0'"),
    cli("lm train --preset nano --out OUT --processes two", "argument --processes: expected a positive integer, got 'two'"),
    cli("lm train --preset nano --out OUT --processes 9",
        "processes must be an integer in 1..8 (each process trains on a share of the batch's 8 rows), got 9"),
    cli("lm train --preset gpu --out OUT --processes 2",
        "processes=2 (data parallelism over local processes) trains on the cpu only, got device 'cuda'"),
    cli("lm corpus --english 0.3", "`lm corpus` prints the generated stories only: leave --english out"),
    # ---------------------------------------------------------------- CLI: lens
    cli("lens vocab TOY_RUN --matrix mlp.W_up", "argument --matrix: unknown matrix 'mlp.W_up'; valid matrices: mlp.W_in"),
    cli("lens vocab TOY_RUN --layer 5", "layer 5 is out of range: valid layers are 0..1"),
    cli("lens vocab TOY_RUN --matrix mlp.W_out --head 0", "--head applies only to attn.W_O and attn.OV, not to mlp.W_out"),
    cli("lens vocab TOY_RUN --matrix attn.OV --head 3", "head 3 is out of range: valid heads are 0..0"),
    cli("lens vocab TOY_RUN --k 0", "argument --k: expected a positive integer, got '0'"),
    cli("lens vocab TOY_RUN --matrix W", "matrix 'W' exists only on a mechtrunc.models.memory.LinearMemory, not on a toy model"),
    cli("lens vocab TOY_RUN --generic 99", "token id 99 is out of range: valid ids are 0..64"),
    cli("lens logit TOY_RUN --truncate mlp.W_in:1", "expected MATRIX:LAYER:KEEP (e.g. mlp.W_in:1:0.1), got 'mlp.W_in:1'"),
    cli("lens logit TOY_RUN --truncate mlp.W_in:1:1.5", "argument --truncate: expected a number in [0, 1], got '1.5'"),
    cli("lens logit TOY_RUN --remove-ffn 4", "layer 4 is out of range: valid layers are 0..1"),
    cli("lens logit EMPTY_FILE", "EMPTY_FILE is a file, not a model directory"),
    cli("patch scan TOY_RUN --task ioi", "--task ioi does not fit a toy run: the toy model is studied on --task recall"),
    cli("patch scan TOY_RUN --sites mlp_output", "argument --sites: unknown site 'mlp_output'"),
    cli("patch scan TOY_RUN --direction sideways", "argument --direction: unknown direction 'sideways'"),
    cli("patch scan TOY_RUN --n 0", "argument --n: expected a positive integer, got '0'"),
    cli("patch scan TOY_RUN --metric p_nope", "unknown metric 'p_nope' for these prompts (competitors: noise); valid: accuracy"),
    cli("patch scan TOY_RUN --out table.txt", "--out table.txt must end in .csv"),
    cli("patch scan EMPTY_DIR --task recall", "EMPTY_DIR is not a model directory: it holds no config.json"),
    cli("patch scan NO_SUCH_DIR", "no such model directory: 'NO_SUCH_DIR'"),
    cli("patch attribute TOY_RUN --method ig", "argument --method: unknown method 'ig'; valid methods: atp, ig-inputs, ig-activations"),
    cli("patch attribute TOY_RUN --steps 0", "argument --steps: expected a positive integer, got '0'"),
    cli("patch attribute TOY_RUN --steps 8", "--steps applies to --method ig-inputs or ig-activations (atp takes one gradient)"),
    cli("patch attribute TOY_RUN --edges --sites z", "--sites applies to node attribution; --edges scores every edge of the model"),
    cli("patch attribute TOY_RUN --edges --method ig-activations", "--edges takes --method atp or ig-inputs"),
    cli("patch attribute TOY_RUN --edges --direction both", "--edges takes --direction denoising or noising"),
    cli("patch attribute TOY_RUN --ablation mean", "--ablation applies to the faithfulness curve of --edges"),
    cli("patch attribute TOY_RUN --edges --ablation zero", "argument --ablation: unknown ablation 'zero'; valid ablations: corrupt, mean"),
    cli("patch attribute TOY_RUN --metric accuracy", "metric 'accuracy' is a step function of the logits (its gradient is zero)"),
    cli("lens vocab TOY_RUN --step 200", "--step applies to language-model runs, checkpoint directories and hub ids"),
    cli("patch path TOY_RUN --receiver o:1:0", "argument --receiver: invalid receiver 'o:1:0': give logits, mlp:LAYER or q|k|v:LAYER:HEAD"),
    cli("patch path TOY_RUN --receiver k:0:0", "no head's output reaches receiver ('k', 0, 0)"),
    cli("patch path TOY_RUN --receiver k:1:0 --sender 1 0", "receiver layer 1 does not read the output of a layer-1 head"),
    cli("patch path TOY_RUN --receiver k:5:0", "layer 5 is out of range: valid layers are 0..1"),
    cli("patch path TOY_RUN --receiver q:1:2", "head 2 is out of range: valid heads are 0..0"),
    # ---------------------------------------------------------------- CLI: circuits checkpoints
    cli("circuits checkpoints TOY_RUN --out OUT", "is a toy run without kept checkpoints: train it with `mechtrunc toy "
        "train --out"),
    cli("circuits checkpoints TOY_RUN --out OUT --ig-steps 3", "--ig-steps applies to --method ig-inputs"),
    cli("circuits checkpoints TOY_RUN --out OUT --method ig-activations", "argument --method: unknown method "
        "'ig-activations'"),
    cli("circuits checkpoints TOY_RUN --out OUT --edges 0", "argument --edges: expected a positive integer, got '0'"),
    cli("circuits checkpoints TOY_RUN --out OUT --task binding", "argument --task: unknown task 'binding'"),
    # ---------------------------------------------------------------- API: interventions
    api("mt.Truncate('mlp.W_up', layer=0, keep=0.5)", "ValueError", "unknown matrix 'mlp.W_up'; valid matrices: mlp.W_in"),
    api("mt.Truncate('mlp.W_in', layer=0, keep=1.5)", "ValueError", "keep must be in [0, 1], got 1.5"),
    api("mt.Truncate('mlp.W_in', layer=0)", "ValueError", "give exactly one of keep= (fraction) or rank= (integer)"),
    api("mt.Truncate('mlp.W_in', layer=0, rank=-1)", "ValueError", "rank must be a non-negative integer, got -1"),
    api("mt.Truncate('mlp.W_in', layer=0, keep=0.5, mode='both')", "ValueError", "unknown mode 'both'"),
    api("mt.Truncate('mlp.W_in', layer=0, keep=0.5, rule='floor')", "ValueError", "unknown rank rule 'floor'"),
    api("apply(toy, mt.Truncate('mlp.W_in', layer=5, keep=0.5))", "ValueError", "layer 5 is out of range"),
    api("apply(neox, mt.Truncate('mlp.W_out', layer=-4, keep=0.5))", "ValueError", "layer -4 is out of range"),
    api("mt.Ablate('nope', layer=0)", "ValueError", "unknown component 'nope'"),
    api("mt.Ablate('head', layer=0)", "ValueError", "give head= exactly when component='head'"),
    api("mt.Ablate('mlp', layer=0, method='resample')", "ValueError", "method='resample' needs reference="),
    api("mt.ProjectOut(site='nope', layer=0, directions=torch.ones(1, 32))", "ValueError", "unknown site 'nope'"),
    api("mt.ProjectOut(site='mlp_out', layer=0)", "ValueError", "ProjectOut needs directions="),
    api("apply(toy, mt.ProjectOut(site='mlp_out', layer=0, directions=torch.ones(2, 7)))", "ValueError",
        "directions must have shape [n, 32] for site 'mlp_out', got (2, 7)"),
    api("mt.Truncate('mlp.W_in', layer=0, keep=0.5) + 3", "TypeError", "unsupported operand type(s) for +: 'Truncate' and 'int'"),
    api("mt.Compose((mt.Ablate('mlp', layer=0), 'mlp'))", "TypeError", "expected Intervention objects, got str"),
    api("mt.RemoveComponents('mlp.W_in', layer=0, indices=[0], svd='randomized')", "ValueError",
        "RemoveComponents needs svd='exact'"),
    api("apply(toy, mt.RemoveComponents('mlp.W_in', layer=0, indices=[99]))", "ValueError", "out of range"),
    # ---------------------------------------------------------------- API: lenses
    api("mt.vocab_lens(toy, 'mlp.W_up', 0)", "ValueError", "unknown matrix 'mlp.W_up' for the vocabulary lens; valid matrices: mlp.W_in"),
    api("mt.vocab_lens(toy, 'mlp.W_out', 2)", "ValueError", "layer 2 is out of range: valid layers are 0..1"),
    api("mt.vocab_lens(neox, 'attn.OV', 0, head=4)", "ValueError", "head 4 is out of range: valid heads are 0..3"),
    api("mt.vocab_lens(toy, 'mlp.W_out', 0, head=0)", "ValueError",
        "matrix 'mlp.W_out' has no heads: head=0 applies only to attn.W_O and attn.OV"),
    api("mt.vocab_lens(toy, 'mlp.W_out', 0, k=0)", "ValueError", "k must be a positive integer, got 0"),
    api("mt.vocab_lens(toy, 'mlp.W_out', 0, components=[40])", "ValueError", "component 40 is out of range"),
    api("mt.rank_generic_components(toy, 'mlp.W_in', 0, generic=[99])", "ValueError", "token id 99 is out of range"),
    api("mt.generic_tokens('the cat', k=1)", "ValueError", "generic_tokens got text but no tokenizer"),
    api("mt.logit_lens(neox, neox_prompts, sites=['resid_end'])", "ValueError", "unknown logit-lens site 'resid_end'"),
    # ---------------------------------------------------------------- API: patching
    api("mt.patching_scan(neox, neox_prompts, neox_prompts.tokens[:1])", "ValueError",
        "unpaired prompt sets: clean is 2 x 8 tokens, corrupted is 1 x 8"),
    api("mt.Patch('attn_out', 0, source=neox_prompts, head=1)", "ValueError",
        "site 'attn_out' has no heads: give head= only with site='z'"),
    api("mt.Patch('z', 0, source=neox_prompts, positions=[99])", "ValueError", "position 99 is outside the source prompts"),
    api("mt.Patch('resid_pre', 0)", "ValueError", "Patch needs source= (the paired PromptSet or a [seq, pos] token tensor)"),
    api("mt.path_patch(neox, neox_prompts, neox_prompts.tokens, (0, 0), ('mlp', 0))", "ValueError",
        "receiver layer 0 does not read the output of a layer-0 head"),
    api("mt.ioi_abc(neox_prompts, tok)", "ValueError", "ioi_abc needs IOI prompts"),
    api("mt.attribution_scan(neox, neox_prompts, neox_prompts.tokens, method='eap')", "ValueError",
        "unknown method 'eap'; valid: atp, ig-inputs, ig-activations"),
    api("mt.attribution_scan(neox, neox_prompts, neox_prompts.tokens, method='ig-inputs', steps=0)", "ValueError",
        "steps must be >= 1 (interpolation steps of EAP-IG), got 0"),
    api("mt.edge_attribution(neox, neox_prompts, neox_prompts.tokens, method='ig-activations')", "ValueError",
        "edge attribution supports method 'atp' and 'ig-inputs'"),
    api("mt.circuit_faithfulness(neox, neox_prompts, neox_prompts.tokens, {})", "TypeError",
        "edges must be a table of mechtrunc.analysis.circuits.edge_attribution"),
    # ---------------------------------------------------------------- API: models, tasks, training
    api("mt.ToyConfig(d_model=30, n_heads=4)", "ValueError", "d_model 30 is not divisible by n_heads 4"),
    api("mt.ToyConfig(ffn='gelu2')", "ValueError", "unknown ffn kind 'gelu2'"),
    api("toy(torch.zeros(1, 100, dtype=torch.long))", "ValueError", "sequence length 100 exceeds n_ctx 64"),
    api("mt.evaluate(toy, prompts_with_token(70))", "ValueError",
        "tokens holds token id 70, outside the model's vocabulary (valid ids 0..64)"),
    api("mt.evaluate(neox, neox_prompts_of_length(65))", "ValueError",
        "the prompts are 65 tokens long but the model's context is 64 tokens"),
    api("mt.TrainConfig(optimizer='rmsprop')", "ValueError", "unknown optimizer 'rmsprop'; valid: sgd, adam, adamw"),
    api("mt.dynamics.MinimalConfig(optimizer='adamw')", "ValueError",
        "optimizer 'adamw' is not one the minimal model trains with (it has no weight decay); valid: sgd, adam"),
    api("mt.TrainConfig(lr=0)", "ValueError", "lr must be a number > 0, got 0"),
    api("mt.TrainConfig(steps=0)", "ValueError", "steps must be an integer >= 1, got 0"),
    api("mt.memory.MemoryConfig(alpha=1.5)", "ValueError", "alpha must be a number in [0, 1], got 1.5"),
    api("mt.memory.MemoryConfig(noise_token=64)", "ValueError", "noise_token must be an integer in 0..63, got 64"),
    api("mt.memory.MemoryTrainConfig(method='adam')", "ValueError", "unknown method 'adam'; valid: gd, sgd"),
    api("mt.dynamics.MinimalConfig(lr=0)", "ValueError", "lr must be a number > 0, got 0"),
    api("mt.dynamics.MinimalConfig(snr_batches=1)", "ValueError", "snr_batches must be 0 (off) or an integer >= 2, got 1"),
    api("mt.dynamics.MinimalConfig(ff='serial')", "ValueError", "unknown ff 'serial'; valid: parallel, sequential, none"),
    api("mt.dynamics.MinimalConfig(lr_scale=dict(attn=2))", "ValueError",
        "unknown lr_scale memory 'attn'; valid: W_F, W_OV, W_KQ"),
    api("mt.dynamics.MinimalConfig(ov_gradient_batch=-1)", "ValueError", "ov_gradient_batch must be an integer >= 0, got -1"),
    api("mt.dynamics.MinimalConfig(ff='none', ff_grad_noise=1.0)", "ValueError",
        "ff='none' has no FF to train: drop ff_grad_noise and lr_scale['W_F']"),
    api("mt.selection.split_prompts(neox_prompts, select=1.0)", "ValueError",
        "select must be a fraction in (0, 1) (the select part's share of the sequences), got 1.0"),
    api("mt.selection.split_prompts(neox_prompts, groups='speaker')", "ValueError",
        "group key 'speaker' is not in the prompt set's meta"),
    api("mt.selection.split_prompts(neox_prompts, groups=[0] * neox_prompts.n_sequences)", "ValueError",
        "a side would be left empty"),
    api("mt.selection.heldout_selection(neox, neox_prompts, [mt.Truncate('mlp.W_in', layer=0, keep=0.5)], budget=0.1)",
        "ValueError", "a collateral budget needs a collateral"),
    api("mt.studies.Grid(keeps=(0.5, 1.5))", "ValueError", "keep must be in [0, 1], got 1.5"),
    api("mt.studies.Grid(keeps=())", "ValueError", "keeps is empty: give at least one fraction in [0, 1]"),
    api("mt.studies.Grid(rule='floor')", "ValueError", "unknown rank rule 'floor'; valid: round, authors"),
    api("mt.studies.Grid(mode='fast')", "ValueError", "unknown mode 'fast'; valid modes: engine, weight, hook"),
    api("mt.preset('cpu', learning_rate=0.1)", "ValueError", "unknown training option 'learning_rate'"),
    api("mt.RecallConfig(alpha=2)", "ValueError", "alpha must be in [0, 1], got 2"),
    api("mt.RecallTask(mt.RecallConfig()).sample(0, seed=0)", "ValueError", "batch_size must be >= 1, got 0"),
    api("mt.load_run(NO_SUCH_DIR)", "ValueError", "model directory NO_SUCH_DIR does not exist"),
    api("mt.ToyTransformer.load(CORRUPT_MODEL_DIR)", "ValueError", "corrupt model directory"),
    api("mt.PromptSet(tokens=torch.zeros(2, 5, dtype=torch.long), rows=torch.tensor([0, 1]), pos=torch.tensor([4]), "
        "answer=torch.tensor([1, 2]), competitors=torch.tensor([3, 3]))", "ValueError", "pos must have shape (2,), got (1,)"),
    api("mt.evaluate(toy, prompts_with_position(70))", "ValueError", "pos must be in [0, 7] (positions)"),
    # ---------------------------------------------------------------- API: Pythia tasks and loading
    api("mt.load_prompts(NO_SUCH_DIR / 'p.csv', tok)", "ValueError", "does not exist (expected a .csv or .jsonl file)"),
    api("mt.load_prompts(EMPTY_CSV, tok)", "ValueError", "the prompt file is empty"),
    api("mt.load_prompts(EMPTY_PROMPT_CSV, tok)", "ValueError", "empty prompt"),
    api("mt.load_prompts(MULTI_TOKEN_ANSWER_CSV, tok)", "ValueError", "answer ' Tegucigalpa' is not a single token"),
    api("mt.load_prompts(MISSING_COLUMN_CSV, tok)", "ValueError", "missing column(s) ['answer']"),
    api("mt.load_prompts(BAD_JSONL, tok)", "ValueError", "line 1"),
    api("mt.ioi_prompts(tok, n=0)", "ValueError", "n must be >= 1"),
    api("mt.ioi_prompts(tok, templates=['no names here'])", "ValueError", "must be in ABB form"),
    api("mt.factual_prompts(tok, relations=['nope'])", "ValueError", "unknown relation(s)"),
    api("mt.ioi_prompts(small_tok, n=4)", "ValueError", "IOI needs at least 2 names that are single tokens under the tokenizer /"),
    api("mt.hf.check_step(1500)", "ValueError", "step 1500 is not a Pythia checkpoint; nearest valid steps: 1000, 2000"),
    api("mt.hf.load_model('EleutherAI/pythia-70m', step=1000, revision='main')", "ValueError",
        "give step= or revision=, not both"),
    api("mt.hf.load_model(TINY_PYTHIA, step=1000)", "ValueError", "is a local directory, which holds a single checkpoint"),
    api("mt.hf.load_model(TINY_PYTHIA, dtype='float8')", "ValueError", "unknown dtype 'float8'"),
    api("mt.hf.load_model(TINY_PYTHIA, device='cuda')", "ValueError", "no CUDA GPU is available", no_gpu=True),
    api("mt.hf.load_model('gpt2')", "ModelNotAvailableError", "model 'gpt2' at revision 'main' is not available"),
    api("mt.hf.tokenizer('./nowhere/tok')", "ModelNotAvailableError", "no such tokenizer directory: ./nowhere/tok"),
    api("mt.hf.pythia_config('3b')", "ValueError", "unknown Pythia size '3b'; valid sizes: 14m"),
    api("mt.studies.truncation_study(neox, neox_prompts, layers=[0], keeps=[0.5], out=HALF_WRITTEN_STUDY, progress=False)",
        "ValueError", "study.json is corrupt (a half-written study?)"),
    api("mt.studies.truncation_study(neox, neox_prompts, layers=[0], keeps=[0.5], out=OTHER_STUDY, progress=False)",
        "ValueError", "holds a study with different settings"),
    # ---------------------------------------------------------------- architectures
    cli("pythia truncate --model OPT_DIR --out OUT",
        "mechtrunc does not know the architecture 'OPTForCausalLM', so it does not run it"),
    api("apply(neox, mt.Truncate('mlp.W_gate', layer=0, keep=0.5))", "ValueError",
        "matrix 'mlp.W_gate' exists only in a gated MLP (the Llama family); this bridge model's MLP is not gated"),
]

PLACEHOLDER = re.compile(r"\b[A-Z][A-Z0-9_]{2,}\b")


# ------------------------------------------------------------------------------------------
# the files and models rows refer to (built lazily, once per module)
# ------------------------------------------------------------------------------------------
class Ctx(dict):
    """Names an API row may use, built on first use."""

    def __init__(self, request, base: Path):
        super().__init__()
        self.request, self.base = request, base

    def __missing__(self, name):
        value = self._build(name)
        self[name] = value
        return value

    def _build(self, name):  # noqa: C901 - a flat list of fixtures
        import torch

        import mechtrunc as mt

        b = self.base
        if name == "mt":
            return mt
        if name == "torch":
            return torch
        if name == "toy":
            return mt.ToyTransformer(mt.ToyConfig(d_model=32, n_ctx=64, seed=3)).eval()
        if name == "neox":
            return self.request.getfixturevalue("neox_bridge")
        if name == "tok":
            return mt.hf.tokenizer(cache_dir=b / "tok_cache")
        if name == "small_tok":
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(self.request.getfixturevalue("small_tokenizer_dir")))
        if name == "apply":
            def apply(model, iv):
                with mt.intervene(model, iv):
                    pass
            return apply
        if name == "prompts_with_position":
            def prompts_with_position(p):
                return mt.PromptSet(tokens=torch.zeros(1, 8, dtype=torch.long), rows=torch.tensor([0]),
                                    pos=torch.tensor([p]), answer=torch.tensor([1]), competitors=torch.tensor([2]))
            return prompts_with_position
        if name == "prompts_with_token":
            def prompts_with_token(t):
                return mt.PromptSet(tokens=torch.full((1, 8), t), rows=torch.tensor([0]), pos=torch.tensor([7]),
                                    answer=torch.tensor([1]), competitors=torch.tensor([2]))
            return prompts_with_token
        if name == "neox_prompts_of_length":
            def neox_prompts_of_length(n):
                return mt.PromptSet(tokens=torch.ones(1, n, dtype=torch.long), rows=torch.tensor([0]),
                                    pos=torch.tensor([n - 1]), answer=torch.tensor([1]), competitors=torch.tensor([2]))
            return neox_prompts_of_length
        if name == "neox_prompts":
            return mt.PromptSet(tokens=torch.arange(16).reshape(2, 8), rows=torch.tensor([0, 1]),
                                pos=torch.tensor([7, 7]), answer=torch.tensor([1, 2]), competitors=torch.tensor([3, 3]))
        if name == "OUT":
            return b / "out"
        if name == "NO_SUCH_DIR":
            return b / "no_such_dir"
        if name == "EMPTY_DIR":
            (b / "empty_dir").mkdir(exist_ok=True)
            return b / "empty_dir"
        if name == "EMPTY_FILE":
            (b / "empty_file").write_text("")
            return b / "empty_file"
        if name == "CORRUPT_MODEL_DIR":
            d = b / "corrupt_model"
            d.mkdir(exist_ok=True)
            (d / "config.json").write_text("{not json")
            (d / "model.safetensors").write_bytes(b"garbage")
            return d
        if name == "MODEL_WITHOUT_TRAIN_CONFIG":
            d = b / "bare_model"
            self["toy"].save(d)
            return d
        if name == "TOY_RUN":
            d = b / "toy_run"
            if not d.exists():
                cfg = mt.preset("cpu", d_model=16, seq_len=16, steps=2, eval_every=2, batch_size=4, test_size=8)
                mt.train(cfg, out_dir=d, progress=False)
            return d
        if name == "RUN_OTHER_CONFIG":
            d = b / "run_other"
            d.mkdir(exist_ok=True)
            other = mt.preset("cpu", d_model=16, seq_len=16, steps=3, alpha=0.1)
            torch.save({"config": asdict(other), "model": {}, "optimizer": {}, "step": 1, "history": []},
                       d / "checkpoint.pt")
            return d
        if name == "RUN_CORRUPT_CHECKPOINT":
            d = b / "run_corrupt"
            d.mkdir(exist_ok=True)
            (d / "checkpoint.pt").write_bytes(b"\x00half a checkpoint")
            return d
        if name == "UNFINISHED_LM_RUN":
            from mechtrunc.models.lm import lm_preset

            d = b / "lm_run_unfinished"
            d.mkdir(exist_ok=True)
            (d / "run.json").write_text(json.dumps({"format": "mechtrunc-lm-run/1", "config": lm_preset("nano").to_dict()}))
            return d
        if name == "CORRUPT_LM_RUN":
            d = b / "lm_run_corrupt"
            d.mkdir(exist_ok=True)
            (d / "run.json").write_text("{cut")
            return d
        if name == "CORRUPT_HF_DIR":
            d = b / "corrupt_hf"
            d.mkdir(exist_ok=True)
            (d / "config.json").write_text('{"model_type": "gpt_neox"')
            return d
        if name == "TINY_PYTHIA":
            return self.request.getfixturevalue("tiny_pythia")
        if name == "OPT_DIR":  # an architecture mechtrunc does not know
            import torch
            from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

            d = b / "opt"
            torch.manual_seed(0)
            OPTForCausalLM(OPTConfig(vocab_size=50304, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                     num_attention_heads=2, word_embed_proj_dim=16,
                                     max_position_embeddings=64)).save_pretrained(d)
            AutoTokenizer.from_pretrained(str(self.request.getfixturevalue("pythia_tokenizer_dir"))).save_pretrained(d)
            return d
        if name == "PROMPTS_TXT":
            (b / "prompts.txt").write_text("prompt,answer\nThe capital of France is, Paris\n")
            return b / "prompts.txt"
        if name == "EMPTY_CSV":
            (b / "empty.csv").write_text("")
            return b / "empty.csv"
        if name == "EMPTY_PROMPT_CSV":
            (b / "empty_prompt.csv").write_text("prompt,answer\n, Paris\n")
            return b / "empty_prompt.csv"
        if name == "MULTI_TOKEN_ANSWER_CSV":
            (b / "multi.csv").write_text("prompt,answer\nThe capital of Honduras is, Tegucigalpa\n")
            return b / "multi.csv"
        if name == "MISSING_COLUMN_CSV":
            (b / "missing_col.csv").write_text("prompt\nThe capital of France is\n")
            return b / "missing_col.csv"
        if name == "LONG_PROMPT_CSV":
            (b / "long.csv").write_text("prompt,answer\n" + "the " * 100 + "capital of France is, Paris\n")
            return b / "long.csv"
        if name == "BAD_JSONL":
            (b / "bad.jsonl").write_text('{"prompt": "The capital of France is", "answer": \n')
            return b / "bad.jsonl"
        if name == "HALF_WRITTEN_STUDY":
            d = b / "half_study"
            d.mkdir(exist_ok=True)
            (d / "study.json").write_text('{"kind": "truncation", "model": ')
            return d
        if name == "OTHER_STUDY":
            d = b / "other_study"
            d.mkdir(exist_ok=True)
            (d / "study.json").write_text(json.dumps({"kind": "truncation", "model": "another model"}))
            return d
        raise KeyError(name)


@pytest.fixture(scope="module")
def tiny_pythia(pythia_tokenizer_dir, tmp_path_factory):
    from mechtrunc.models.testing import build_random_pythia

    return build_random_pythia({"hidden_size": 32, "num_attention_heads": 4, "max_position_embeddings": 64},
                               tokenizer_dir=pythia_tokenizer_dir, out_dir=tmp_path_factory.mktemp("tiny_pythia"),
                               n_layers=1, seed=0)


@pytest.fixture(scope="module")
def ctx(request, tmp_path_factory):
    return Ctx(request, tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture
def no_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def empty_hf_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))


def _row_id(row: Bad) -> str:
    return f"{row.where}: {row.given}"[:90]


@pytest.mark.parametrize("row", BAD_INPUTS, ids=_row_id)
def test_bad_input(row: Bad, ctx, capsys, request, empty_hf_cache, monkeypatch, tmp_path):
    if row.no_gpu:
        request.getfixturevalue("no_gpu")
    monkeypatch.chdir(ctx.base)
    if row.where == "CLI":
        from mechtrunc.cli import main

        fresh = {"OUT": tmp_path / "out"}  # a new output directory for every row
        argv = [str(fresh.get(w) or ctx[w]) if PLACEHOLDER.fullmatch(w) else w for w in shlex.split(row.given)]
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        expected = PLACEHOLDER.sub(lambda m: str(ctx[m.group(0)]) if m.group(0) in _PATHS else m.group(0), row.message)
        assert code == 2, err
        assert "Traceback" not in err and "error:" in err
        assert expected in err, err
    else:
        names = {w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", row.given)} - {"mt", "torch"}
        scope = {"mt": ctx["mt"], "torch": ctx["torch"]}
        scope.update({n: ctx[n] for n in names if _known(ctx, n)})
        with pytest.raises(Exception) as info:
            eval(row.given, scope)  # noqa: S307 - the table's own expressions
        assert type(info.value).__name__ == row.error, repr(info.value)
        expected = PLACEHOLDER.sub(lambda m: str(ctx[m.group(0)]) if m.group(0) in _PATHS else m.group(0), row.message)
        assert expected in str(info.value), str(info.value)


_PATHS = {"NO_SUCH_DIR", "OUT", "EMPTY_DIR", "EMPTY_FILE"}
_NAMES = {"toy", "neox", "tok", "small_tok", "apply", "prompts_with_position", "neox_prompts", "prompts_with_token",
          "neox_prompts_of_length"}


def _known(ctx, name: str) -> bool:
    return name in _NAMES or bool(PLACEHOLDER.fullmatch(name) and name not in {"ValueError"})


# ------------------------------------------------------------------------------------------
# the doc is generated from the table
# ------------------------------------------------------------------------------------------
def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_doc() -> str:
    n_cli = sum(r.where == "CLI" for r in BAD_INPUTS)
    lines = [
        "# Bad inputs and the errors they get",
        "",
        "<!-- generated by `python tests/test_bad_inputs.py` from the table in tests/test_bad_inputs.py; "
        "do not edit by hand (test_doc_is_up_to_date fails when they disagree) -->",
        "",
        f"{len(BAD_INPUTS)} user mistakes ({n_cli} on the command line, {len(BAD_INPUTS) - n_cli} in the Python API), "
        "each checked by one test (`pytest tests/test_bad_inputs.py`).  Every command-line mistake exits with "
        "status 2 and prints `mechtrunc: error: ...` (or argparse's usage line and `error: ...`), never a "
        "traceback.  Argument values (ranges, choices, Pythia checkpoint steps, prompt-file names) are "
        "checked before torch is imported, so those errors come back at once "
        "(`python benchmarks/bench_cli_startup.py`).  A training command pointed at a directory that holds "
        "a run of another configuration (`--steps` included) names every differing field with both values "
        "and changes nothing; `--extend` is the one way to train a run on to more steps (docs/api.md, "
        "\"Training runs and their output directory\").",
        "",
        "UPPERCASE words are paths the test creates: `OUT` a new output directory, `NO_SUCH_DIR` a missing "
        "one, `EMPTY_DIR` / `EMPTY_FILE` empty ones, `TINY_PYTHIA` a 1-layer Pythia-shaped model with "
        "Pythia's tokenizer and a 64-token context (saved with `save_pretrained`), `OPT_DIR` a tiny random OPT "
        "(an architecture mechtrunc does not know) saved the same way, `TOY_RUN` a finished toy "
        "run, `UNFINISHED_LM_RUN` a `mechtrunc lm train --preset nano` directory holding only its `run.json`, "
        "`CORRUPT_LM_RUN` one whose `run.json` was cut off, "
        "`HALF_WRITTEN_STUDY` a study directory whose `study.json` was cut off, `*_CSV` / `*_JSONL` prompt "
        "files as named, `RUN_OTHER_CONFIG` a toy training checkpoint of `alpha` 0.1 and 3 steps.  In Python rows, `toy` is a ToyTransformer (d_model 32, context 64, vocabulary 65), "
        "`neox` a 3-layer GPT-NeoX bridge (vocabulary 512, context 64), `tok` Pythia's tokenizer "
        "(`mt.hf.tokenizer()`), `small_tok` a word-level tokenizer, `apply(model, iv)` enters and leaves "
        "`mt.intervene(model, iv)`.  \"(no GPU)\": run as if CUDA were absent.",
        "",
        "| # | where | input | error | the message contains |",
        "|---|---|---|---|---|",
    ]
    for i, r in enumerate(BAD_INPUTS, 1):
        given = ("mechtrunc " + r.given) if r.where == "CLI" else r.given
        where = r.where + (" (no GPU)" if r.no_gpu else "")
        lines.append(f"| {i} | {where} | `{_md(given)}` | {r.error} | {_md(r.message)} |")
    return "\n".join(lines) + "\n"


def test_table_is_big_and_distinct():
    assert len(BAD_INPUTS) >= 40
    assert len({(r.where, r.given) for r in BAD_INPUTS}) == len(BAD_INPUTS)


def test_doc_is_up_to_date():
    assert DOC.read_text() == render_doc(), "docs/bad-inputs.md is stale: run `python tests/test_bad_inputs.py`"


if __name__ == "__main__":
    DOC.write_text(render_doc())
    print(f"wrote {DOC.relative_to(ROOT)} ({len(BAD_INPUTS)} rows)", file=sys.stderr)
