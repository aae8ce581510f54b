"""Shared test tools (TRL's `testing_utils` pattern): tiny random models, tokenizers, data and arguments.

Everything is built from configs in seconds, offline. Test files import from here; `conftest.py` holds the
pytest fixtures and markers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest
import torch
import transformers as tf
from datasets import Dataset
from model_configs import gpt2_config, llama_config
from tokenizers import Tokenizer, models

from hf_distill import DistillationArguments, DistillationTrainer

# Tiny models are overhead-bound: one intra-op thread per process is as fast and does not oversubscribe
# a 2-core machine when tests start subprocesses (torchrun) or run beside other work.
torch.set_num_threads(1)

# Limits on child processes (torchrun, recipes, benchmarks) guard against a hung child only (a deadlocked process
# group), never against a slow machine: on 2 cores shared with other work a 30 s launch can take many minutes, and no
# test may fail because the machine is slow or busy. Tests wait on events (exit codes, files, log lines), not on time.
HANG_TIMEOUT_S = 1800

VOCAB = 101  # tiny shared vocabulary size
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
TOKENS = 50  # the causal-LM tokenizer's size (`lm_tokenizer`); output layers may be padded beyond it

# ---- arguments ----------------------------------------------------------------------------------------------

# What every test run shares: CPU, no reports, no checkpoints, no progress bars, a log line per step.
TEST_ARGS = {"report_to": [], "use_cpu": True, "save_strategy": "no", "disable_tqdm": True, "logging_steps": 1}


# The causal-LM trainer tests' settings (test_llm_trainer.py, test_packing.py): 3 SGD steps at T = 1.
LM_TRAINER_ARGS = {
    "per_device_train_batch_size": 4,
    "max_steps": 3,
    "optim": "sgd",
    "learning_rate": 0.5,
    "seed": 0,
    "soft_weight": 0.6,
    "hard_weight": 0.4,
    "temperature": 1.0,
}


def distillation_args(output_dir, /, **kw) -> DistillationArguments:
    """The one builder of `DistillationArguments` for tests: `TEST_ARGS`, then `kw` (which win, output_dir too)."""
    return DistillationArguments(**{"output_dir": str(output_dir), **TEST_ARGS, **kw})


# ---- encoders -----------------------------------------------------------------------------------------------


def bert_config(layers=12, hidden=64, heads=4, num_labels=3, vocab=VOCAB, **kw):
    return tf.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        num_labels=num_labels,
        **kw,
    )


def tiny_bert(layers=12, hidden=64, num_labels=3, seed=0, cls=tf.BertForSequenceClassification, **kw):
    torch.manual_seed(seed)
    return cls(bert_config(layers=layers, hidden=hidden, num_labels=num_labels, **kw)).eval()


def tiny_roberta(layers=4, hidden=32, seed=0, cls=tf.RobertaForSequenceClassification):
    torch.manual_seed(seed)
    return cls(
        tf.RobertaConfig(
            vocab_size=VOCAB,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=70,
            num_labels=3,
        )
    )


def tiny_distilbert(layers=4, hidden=32, seed=0, cls=tf.DistilBertForSequenceClassification, num_labels=3):
    torch.manual_seed(seed)
    return cls(
        tf.DistilBertConfig(
            vocab_size=VOCAB,
            dim=hidden,
            n_layers=layers,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=64,
            num_labels=num_labels,
        )
    )


# ---- causal LMs: one config builder per architecture (model_configs.py) ------------------------------------


def tiny_gpt2(layers=4, hidden=32, seed=0, vocab=VOCAB, **config) -> tf.GPT2LMHeadModel:
    torch.manual_seed(seed)
    return tf.GPT2LMHeadModel(gpt2_config(vocab, hidden, layers, **config))


def tiny_llama(layers=4, hidden=32, seed=0, vocab=VOCAB, **config) -> tf.LlamaForCausalLM:
    torch.manual_seed(seed)
    return tf.LlamaForCausalLM(llama_config(vocab, hidden, layers, **config))


LM_CLASSES = {"gpt2": tf.GPT2LMHeadModel, "llama": tf.LlamaForCausalLM}


def tiny_lm_config(arch: str = "llama", vocab: int = 56, hidden: int = 16, **kw):
    """Config of the 2-layer causal LMs of the chunked-loss tests: no dropout, untied Llama head, 32 positions."""
    if arch == "gpt2":
        return gpt2_config(vocab, hidden, 2, heads=2, positions=32, dropout=0.0, **kw)
    return llama_config(
        vocab, hidden, 2, heads=2, kv_heads=1, intermediate=2 * hidden, positions=32, tie_word_embeddings=False, **kw
    )


def tiny_lm(arch: str = "llama", vocab: int = 56, hidden: int = 16, seed: int = 0):
    """A 2-layer causal LM (`tiny_lm_config`; GPT-2 with pad id 0), seeded."""
    torch.manual_seed(seed)
    return LM_CLASSES[arch](tiny_lm_config(arch, vocab, hidden, **({"pad_token_id": 0} if arch == "gpt2" else {})))


# ---- tokenizers and data -------------------------------------------------------------------------------------


def make_tokenizer(directory, words=WORDS) -> tf.PreTrainedTokenizerBase:
    """A BERT WordPiece tokenizer over the tiny vocabulary WORDS (w0 .. w95), saved to `directory`."""
    tokenizer = tf.BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def lm_tokenizer() -> tf.PreTrainedTokenizerFast:
    """A word-level tokenizer over t0 .. t49 (pad t0, unk t1) for the causal-LM tests."""
    vocab = {f"t{i}": i for i in range(TOKENS)}
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t1")), pad_token="t0", unk_token="t1"
    )


def classification_data(n=32, seq=12, num_labels=3, seed=0, with_padding=True) -> Dataset:
    """Random token rows; label = (count of even ids) mod num_labels, so the task is learnable."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.long)
    if with_padding:
        lengths = torch.randint(seq // 2, seq + 1, (n,), generator=g)
        for i, length in enumerate(lengths):
            mask[i, length:] = 0
            ids[i, length:] = 0
    labels = ((ids % 2 == 0) & (mask == 1)).sum(1) % num_labels
    return Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": mask.tolist(),
            "token_type_ids": torch.zeros_like(ids).tolist(),
            "labels": labels.tolist(),
        }
    )


def fixed_batch(n=4, seq=10, num_labels=3, seed=1) -> dict[str, torch.Tensor]:
    ds = classification_data(n, seq, num_labels, seed)
    return {k: torch.tensor(ds[k]) for k in ds.column_names}


def lm_data(n: int = 16, seed: int = 0) -> Dataset:
    """Unpadded rows of 3-12 tokens; some rows have an ignored prompt (-100 labels), one has no label at all."""
    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "labels": []}
    for i in range(n):
        ids = torch.randint(2, TOKENS, (int(torch.randint(3, 13, (1,), generator=g)),), generator=g).tolist()
        labels = list(ids)
        if i % 3 == 0:
            labels[: len(ids) // 2] = [-100] * (len(ids) // 2)
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
    return Dataset.from_dict(rows)


def lm_collate(features: list[dict]) -> dict:
    """Right padding to the longest row: pad id 0, attention_mask 0, label -100."""
    width = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        pad = width - len(f["input_ids"])
        batch["input_ids"].append(f["input_ids"] + [0] * pad)
        batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
        batch["labels"].append(f["labels"] + [-100] * pad)
    return {k: torch.tensor(v) for k, v in batch.items()}


def lm_trainer(output_dir, student, teachers, data=None, collator=lm_collate, peft_config=None, **kw):
    """A `DistillationTrainer` of causal LMs: `LM_TRAINER_ARGS` then `kw`, on `lm_data()` unless `data` is given,
    with `lm_tokenizer()` and `collator`."""
    return DistillationTrainer(
        student,
        teachers,
        distillation_args(output_dir, **{**LM_TRAINER_ARGS, **kw}),
        train_dataset=data if data is not None else lm_data(),
        data_collator=collator,
        processing_class=lm_tokenizer(),
        peft_config=peft_config,
    )


def assert_same_weights(a: dict, b: dict, rtol: float = 1e-5) -> None:
    """Two state dicts with the same keys and values equal to `rtol`, relative to each tensor's largest entry."""
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=rtol * a[k].abs().max().item(), msg=k)


@contextlib.contextmanager
def imported_script(path, name: str):
    """A script (e.g. benchmarks/real_data.py) imported as module `name`, in sys.modules while in use
    (dataclasses look their module up while the class is built)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


def run_script_main(path, argv: list[str]) -> str:
    """What `python path *argv` prints, run in this process (no interpreter start-up and library imports per run):
    the script's `main()` with `sys.argv` = [path, *argv] and its folder first on `sys.path`, as when run as a script.
    What a script changes for itself is undone after it: sys.argv, sys.path, torch's thread count, the modules it
    imported from its folder. Exceptions propagate (the test fails with the script's traceback).

    Args:
        path: the script (e.g. benchmarks/scaling.py), which has a `main()` that reads `sys.argv`.
        argv: its command-line arguments.
    """
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    name = os.path.splitext(os.path.basename(path))[0]
    saved_argv, saved_path, threads, modules = sys.argv, list(sys.path), torch.get_num_threads(), set(sys.modules)
    out = io.StringIO()
    try:
        sys.argv = [path, *argv]
        sys.path.insert(0, folder)
        with imported_script(path, name) as module, contextlib.redirect_stdout(out):
            module.main()
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
        torch.set_num_threads(threads)
        for added in set(sys.modules) - modules:
            if (getattr(sys.modules[added], "__file__", None) or "").startswith(folder + os.sep):
                del sys.modules[added]
    return out.getvalue()


# ---- multi-process runs (torchrun, gloo on CPU) -------------------------------------------------------------

_VENV_TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
TORCHRUN = _VENV_TORCHRUN if os.path.exists(_VENV_TORCHRUN) else shutil.which("torchrun")
requires_torchrun = pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")


def run_to_completion(cmd: list[str], env: dict, timeout: float = HANG_TIMEOUT_S, attempts: int = 1) -> None:
    """Run `cmd`; fail with its output unless it exits 0. A run that hangs is retried up to `attempts` times
    (seen once on a machine shared by several torchrun jobs); `timeout` only guards against a hang."""
    for attempt in range(attempts):
        try:
            result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
            break
        except subprocess.TimeoutExpired as err:
            if attempt == attempts - 1:
                raise AssertionError(f"{cmd} stalled {attempts} time(s):\n{err.stdout}\n{err.stderr}") from err
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def torchrun(script, argv: list[str], env: dict | None = None, timeout: float = HANG_TIMEOUT_S) -> None:
    """`torchrun --nproc_per_node 2 --standalone SCRIPT *argv`; fails with its output unless it exits 0.

    Args:
        script: the script's path (a recipe, or a test script such as tests/fsdp_train.py).
        argv: its arguments.
        env: the environment; default this one with one thread per process and the repository first on PYTHONPATH.
        timeout: `run_to_completion`'s hang guard.
    """
    if env is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
        env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    run_to_completion([*launch, str(script), *argv], env, timeout)


def one_and_two_processes(run, out_dir, one: list[str], two_dir) -> tuple[dict, dict]:
    """The single-process run, here: `run([OUT/one, *one])`; and the two-process run's folder `two_dir` (a job of the
    session's torchrun launch, `conftest.torchrun_jobs`). Their final.pt state dicts, after checking that they ran
    as 1 and 2 processes (the `world_size` entry, removed).

    Args:
        run: a test script's `run(argv)` (tests/ddp_train.py): it writes OUT_DIR/final.pt with a `world_size` entry.
        out_dir: the folder for the single run's output folder.
        one: the script's arguments after OUT_DIR for the single process.
        two_dir: the OUT_DIR of the same script's two-process run.
    """
    run([str(out_dir / "one"), *one])
    single, double = torch.load(out_dir / "one" / "final.pt"), torch.load(two_dir / "final.pt")
    assert single.pop("world_size").item() == 1 and double.pop("world_size").item() == 2
    return single, double
