"""Shared fixtures: tiny offline bridges (GPT-NeoX / Pythia-shaped and GPT-2), Pythia's real
tokenizer (shipped in the package), and a quickly trained toy model.

A skipped test is a failure here: every test must run on a fresh clone with nothing beside it
(no ../shared, no GPU, no Hugging Face cache), so a skip means a broken setup or a test that
silently stopped checking anything.  ``MECHTRUNC_ALLOW_SKIPS=1`` turns skips back into skips for
a deliberate partial run."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

# The kernels the docs' numbers were produced with (docs/results.md, "Numbers across machines"):
# torch's AVX2 kernels on x86-64, as analyses/_common.py sets them.  Other CPUs may still give
# other last digits: tests compare exact numbers only with numbers of the same run, or with
# docs/data where docs/data/provenance.json records this machine's fingerprint.  Must precede the
# import of torch.
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")

# A pytest-xdist worker (``make test`` runs ``-n auto``, one worker per core) runs torch on one
# thread, and so do the processes it starts, so that the workers do not oversubscribe the cores.
# Must precede the import of torch.
XDIST_WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER"))
if XDIST_WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1 if XDIST_WORKER else min(2, torch.get_num_threads()))

ALLOW_SKIPS = os.environ.get("MECHTRUNC_ALLOW_SKIPS", "").strip().lower() in ("1", "true", "yes", "on")


def _skip_is_failure(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and not ALLOW_SKIPS:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"{reason}\n-> a skipped test counts as a failure in this suite (every test must run "
                           "on a fresh clone); set MECHTRUNC_ALLOW_SKIPS=1 for a deliberate partial run")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _skip_is_failure(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _skip_is_failure(outcome.get_result())


#: The models the slow tests share, trained in the background from the moment the tests that need
#: them are collected: each job is a subprocess (one thread, niced: idle cycles only, the suite's
#: own tests come first) running a committed script, one at a time on the core the rest of the
#: suite leaves idle, and two at a time once a test waits for one (the suite has nothing else to
#: do).  The tests that need a job run last, in the jobs' order, so the training has the whole
#: suite's time.  Under pytest-xdist (``make test`` runs ``-n auto``) the controller process runs
#: the jobs, once for all workers, and the workers wait for them (:func:`background_result`).
#: job -> command (given the job's output directory), in the order they start.
_ROOT = Path(__file__).resolve().parents[1]


def _toy_seed(seed: int):
    """The ``cpu`` preset at ``seed`` through the script that wrote docs/data (the run in
    ``../runs/cpu-seed{seed}``, its table in the job's directory)."""
    return lambda out: [str(_ROOT / "analyses" / "toy_seeds_table.py"), "--seeds", str(seed),
                        "--runs", str(out.parent / "runs"), "--out", str(out)]


BACKGROUND_JOBS = {
    "seed0": _toy_seed(0),  # make demo's model (conftest.demo_toy)
    "neox": lambda out: [str(_ROOT / "tests" / "test_pythia_phenomenon.py"), str(out)],  # conftest.phenomenon_neox
    "seed1": _toy_seed(1),  # conftest.cpu_seeds_1_2
    "seed2": _toy_seed(2),
}
#: fixture -> the background jobs it waits for
BACKGROUND_FIXTURES = {"demo_toy": ("seed0",), "phenomenon_neox": ("neox",), "cpu_seeds_1_2": ("seed1", "seed2")}


class _Background:
    """Runs ``jobs`` (names of :data:`BACKGROUND_JOBS`, in this order) from a thread of this
    process, each as a niced single-threaded subprocess writing into ``tmp/<job>/`` (its output in
    ``tmp/<job>.log``, its return code in ``tmp/<job>.rc`` once it ended): one at a time until a
    test waits for one (``tmp/<job>.wanted``, :func:`_wait`), then two at a time.  ``tmp`` is a
    new temporary directory unless given (the one pytest-xdist's workers are told).

    Under pytest-xdist the workers keep every core busy, so niced jobs would only start when the
    tests that need them wait, and the suite would end on minutes of training alone: there the
    jobs run at the workers' priority (``nice=0``), two at a time from the start (``width=2``),
    sharing the cores with the tests."""

    def __init__(self, jobs: list[str], tmp: Path | None = None, nice: int = 15, width: int = 1):
        import tempfile
        import threading

        self.tmp = Path(tempfile.mkdtemp(prefix="mechtrunc-background-")) if tmp is None else tmp
        self.jobs = list(jobs)
        self.lock = threading.Lock()
        self.running: dict = {}  # job -> Popen
        self.nice, self.width = nice, width
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _start(self, job: str):
        import subprocess
        import sys

        out = self.tmp / job
        out.mkdir()
        with open(self.tmp / f"{job}.log", "w") as log:
            proc = subprocess.Popen([sys.executable, *BACKGROUND_JOBS[job](out)], stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:  # (not preexec_fn: this is not the main thread)
            if self.nice:
                os.setpriority(os.PRIO_PROCESS, proc.pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.nice))
        except OSError:  # already gone: its return code says how
            pass
        return proc

    def _run(self) -> None:
        import time

        pending = list(self.jobs)
        while True:
            with self.lock:
                if self.stopped:
                    return
                if any((self.tmp / f"{job}.wanted").exists() for job in self.jobs):
                    self.width = 2  # a test waits: its core is idle too
                while pending and len(self.running) < self.width:
                    job = pending.pop(0)
                    self.running[job] = self._start(job)
                for job, proc in list(self.running.items()):
                    if proc.poll() is not None:
                        del self.running[job]
                        part = self.tmp / f"{job}.rc.part"
                        part.write_text(str(proc.returncode))
                        part.replace(self.tmp / f"{job}.rc")  # whole, or not there
                if not pending and not self.running:
                    return
            time.sleep(0.2)

    def stop(self) -> None:
        import shutil

        with self.lock:
            self.stopped = True
            for proc in self.running.values():
                proc.kill()
                proc.wait()
        self.thread.join(timeout=60)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _wait(tmp: Path, job: str, timeout: float = 2400) -> Path:
    """``tmp/<job>``, once background job ``job`` ended (waits for it, saying so to whoever runs
    it: ``tmp/<job>.wanted``; fails with its log if it failed)."""
    import time

    rc = tmp / f"{job}.rc"
    if not rc.exists():
        (tmp / f"{job}.wanted").touch()
    deadline = time.monotonic() + timeout
    while not rc.exists():
        assert time.monotonic() < deadline, f"background job {job!r} still running after {timeout} s"
        time.sleep(0.2)
    log = (tmp / f"{job}.log").read_text()
    assert rc.read_text() == "0", f"background job {job!r} failed:\n{log[-4000:]}"
    return tmp / job


_BACKGROUND: list[_Background] = []
#: under pytest-xdist: the controller's directory of the background jobs ("dir") and, in a worker,
#: the jobs the controller runs for it ("jobs")
_SHARED: dict = {}


def _jobs_of(item) -> set[str]:
    return {job for f in getattr(item, "fixturenames", ()) for job in BACKGROUND_FIXTURES.get(f, ())}


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: only what will run starts training
def pytest_collection_modifyitems(config, items):
    order = list(BACKGROUND_JOBS)
    waiting = [item for item in items if _jobs_of(item)]
    # last, in the order of the latest job each waits for: the background training has the whole suite's time
    waiting.sort(key=lambda item: max(order.index(job) for job in _jobs_of(item)))
    for item in waiting:
        items.remove(item)
    items.extend(waiting)
    needed = set().union(*map(_jobs_of, waiting))
    jobs = [job for job in order if job in needed]
    if config.option.collectonly:
        return
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "mechtrunc_background" in workerinput:
        # a pytest-xdist worker: the controller trains (every worker collects the same tests)
        shared = Path(workerinput["mechtrunc_background"])
        (shared / f"needed-{workerinput['workerid']}.json").write_text(json.dumps(jobs))
        _SHARED.update(dir=shared, jobs=set(jobs))
    elif jobs:
        _BACKGROUND.append(_Background(jobs))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist's controller, before it starts a worker: the directory of the background jobs."""
    if "dir" not in _SHARED:
        import tempfile

        _SHARED["dir"] = Path(tempfile.mkdtemp(prefix="mechtrunc-background-"))
    node.workerinput["mechtrunc_background"] = str(_SHARED["dir"])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """pytest-xdist's controller, once a worker collected: it starts the background jobs that
    worker's tests need, once (every worker collects the same tests)."""
    if _BACKGROUND or "dir" not in _SHARED:
        return
    needed = _SHARED["dir"] / f"needed-{node.workerinput['workerid']}.json"
    jobs = json.loads(needed.read_text()) if needed.exists() else []  # (absent: its collection failed)
    if jobs:
        _BACKGROUND.append(_Background(jobs, tmp=_SHARED["dir"], nice=0, width=2))


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per CPU this process may run on, at most 4 (every worker builds its
    own session fixtures; beyond 4 the background training and the longest tests set the time).
    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still overrides it."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cpus))


def pytest_sessionfinish(session, exitstatus):
    import shutil

    for background in _BACKGROUND:
        background.stop()
    if not hasattr(session.config, "workerinput") and "dir" in _SHARED:  # pytest-xdist's controller
        shutil.rmtree(_SHARED["dir"], ignore_errors=True)


def background_result(job: str) -> Path:
    """The output directory of background job ``job`` (started now, alone, if no collected test
    asked for it)."""
    if job in _SHARED.get("jobs", ()):
        return _wait(_SHARED["dir"], job)
    running = next((b for b in _BACKGROUND if job in b.jobs), None)
    if running is None:
        running = _Background([job])
        _BACKGROUND.append(running)
    return _wait(running.tmp, job)


@pytest.fixture(scope="session")
def cpu_seeds_1_2():
    """A function that returns the truncation table of seeds 1 and 2 of the ``cpu`` preset
    (``cpu_seeds_truncation.csv`` of ``analyses/toy_seeds_table.py --seeds 1`` and ``--seeds
    2``), trained in the background: it waits for them, so a test calls it after the work that
    does not need them."""
    import pandas as pd

    def table() -> pd.DataFrame:
        tables = [pd.read_csv(background_result(job) / "cpu_seeds_truncation.csv") for job in ("seed1", "seed2")]
        return pd.concat(tables, ignore_index=True)

    return table


@pytest.fixture(scope="session")
def phenomenon_neox() -> Path:
    """The directory ``python tests/test_pythia_phenomenon.py DIR`` wrote (its trained GPT-NeoX),
    trained in the background."""
    return background_result("neox")


def _word_level_tokenizer_dir(tmp: Path, vocab_size: int = 512) -> Path:
    """A small word-level tokenizer ("w0".."w510" and "<unk>") saved on disk (bridges need one)."""
    from mechtrunc.models.testing import word_level_tokenizer_dir

    tokens = [f"w{i}" for i in range(vocab_size - 1)] + ["<unk>"]
    return word_level_tokenizer_dir(tmp, tokens, unk_token="<unk>", special_token="<unk>")


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models and batches run faster on one intra-op thread than on two (and are immune to
    OpenMP spin-waiting on a busy machine); modules opt in with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def pythia_tokenizer_dir(tmp_path_factory) -> Path:
    """Pythia's real tokenizer (GPT-NeoX-20B BPE, shipped in the package) as a Hugging Face
    tokenizer directory (in a temporary cache, not the user's)."""
    from mechtrunc.models.hf import tokenizer_dir

    return tokenizer_dir(cache_dir=tmp_path_factory.mktemp("pythia_tok"))


@pytest.fixture(scope="session")
def small_tokenizer_dir(tmp_path_factory) -> Path:
    return _word_level_tokenizer_dir(tmp_path_factory.mktemp("small_tok"))


def _boot(hf_model, name: str, tokenizer_dir: Path):
    from transformer_lens import TransformerBridge
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model.eval(), tokenizer=tok, device="cpu")
    bridge.eval()
    return bridge


@pytest.fixture(scope="session")
def neox_bridge(small_tokenizer_dir):
    """A tiny random GPT-NeoX (Pythia-shaped: parallel attention + MLP, partial rotary, LN)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=256, rotary_pct=0.25, max_position_embeddings=64,
                        use_parallel_residual=True, attention_dropout=0.0, hidden_dropout=0.0)
    return _boot(GPTNeoXForCausalLM(cfg), "EleutherAI/pythia-70m", small_tokenizer_dir)


@pytest.fixture(scope="session")
def gpt2_bridge(small_tokenizer_dir):
    """A tiny random GPT-2 (sequential blocks, learned positions, Conv1D weights)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    cfg = GPT2Config(vocab_size=512, n_embd=64, n_layer=3, n_head=4, n_positions=64,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return _boot(GPT2LMHeadModel(cfg), "gpt2", small_tokenizer_dir)


@pytest.fixture(scope="session")
def random_toy():
    from mechtrunc import ToyConfig, ToyTransformer

    return ToyTransformer(ToyConfig(d_model=32, n_ctx=64, seed=3)).eval()


@pytest.fixture(scope="session")
def trained_toy():
    """A small toy model trained briefly (seconds) on noisy recall, with its clean test prompts."""
    from mechtrunc.models.toy_training import preset, train

    cfg = preset("cpu", d_model=32, seq_len=64, steps=300, eval_every=300, test_size=128, seed=0)
    result = train(cfg, progress=False)
    from mechtrunc import RecallTask

    task = RecallTask(cfg.recall_config())
    return result.model, task, task.test_set(128, seed=cfg.seed + 10_000).to_prompts()


@pytest.fixture(scope="session")
def demo_toy():
    """The ``cpu`` preset at seed 0, trained once per test run in the background (about 2 minutes
    on one thread; ``analyses/toy_seeds_table.py --seeds 0``, which wrote docs/data): ``make
    demo``'s configuration, the one docs/results.md and docs/causal.md describe (a
    :class:`mechtrunc.models.toy_training.TrainResult`, the finished run as :func:`mechtrunc.models.toy_training.train`
    returns it; never edit it in place outside a reversible intervention)."""
    from mechtrunc.models.toy_training import preset, train

    result = train(preset("cpu", seed=0), out_dir=background_result("seed0").parent / "runs" / "cpu-seed0",
                   progress=False)
    assert result.already_finished, "the background run of seed 0 did not finish"
    return result


@pytest.fixture(scope="session")
def recall_checkpoints(tmp_path_factory):
    """Six checkpoints (steps 0, 1, 2, 4, 8, 16) of a tiny recall-trained GPT-NeoX (1 layer,
    d_model 32) saved as DIR/step{N}/, and 32 clean recall prompts: (dir, steps, prompts)."""
    from helpers import save_training_checkpoints

    from mechtrunc.tasks.recall import RecallConfig, RecallTask

    cfg = RecallConfig(alpha=0.5, seq_len=32)
    out = tmp_path_factory.mktemp("recall_ckpts")
    with torch.random.fork_rng(devices=[]):
        dirs = save_training_checkpoints(out, [0, 1, 2, 4, 8, 16], n_layers=1, d_model=32, n_heads=2,
                                         batch_size=16, task_config=cfg)
    return out, list(dirs), RecallTask(cfg).test_set(32).to_prompts()


@pytest.fixture(scope="session")
def neox_seq_bridge(small_tokenizer_dir):
    """A tiny random GPT-NeoX with sequential residual blocks (``use_parallel_residual=False``)."""
    from mechtrunc.models.testing import tiny_bridge

    return tiny_bridge("gpt_neox", small_tokenizer_dir, seed=2, use_parallel_residual=False)


@pytest.fixture(scope="session")
def gptj_bridge(small_tokenizer_dir):
    """A tiny random GPT-J (parallel attention + MLP reading one LayerNorm, interleaved rotary)."""
    from mechtrunc.models.testing import tiny_bridge

    return tiny_bridge("gptj", small_tokenizer_dir, seed=3)


@pytest.fixture(scope="session")
def nano_run(tmp_path_factory):
    """The ``nano`` language model (mechtrunc.models.lm) trained once per session: ``(run dir, summary)``."""
    from mechtrunc.models.lm import lm_preset, train_lm

    out = tmp_path_factory.mktemp("lm") / "nano"
    return out, train_lm(lm_preset("nano"), out, progress=False)
