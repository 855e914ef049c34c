"""Text training speed and memory: the shipped word-list configs by `dltrain train` against PyTorch, one epoch.

    python benchmarks/text.py                                   # both configs, 3 reps, the "Text" section of RESULTS.md
    python benchmarks/text.py --cases wordlists_gru --reps 5    # a subset
    python benchmarks/text.py --reps 1 --samples 4096           # smoke test (with --check): writes no results
    python benchmarks/text.py --check                           # also verify that both sides train the same thing

What users run, measured as they run it, as benchmarks/cpu.py does for images. The dltrain side of a case is the
shipped config (configs/wordlists_transformer.yaml, configs/wordlists_gru.yaml) trained by the CLI in a child
process: `dltrain train CONFIG --set training.epochs=1 --set training.early_stopping=false -q --run-dir TMP`. Its
speed is summary.json's train_samples_per_second: training samples over the seconds of the epoch's training loop
(shuffle, gather each batch, forward, loss read every step, backward, clipping, step; not validation, test
evaluation, checkpoints or plotting). The PyTorch side, in its own child process, takes the same token arrays from
dltrain's own data pipeline, untimed (build_for(config).splits.train: character ids (N, 24), right-padded with id 0,
the same words, split and vocabulary), and trains the config's model written as a PyTorch user writes it:

- wordlists_transformer: nn.Embedding(vocab, 64, padding_idx=0) + a learned positional table (nn.Parameter
  (max_length, 64) ~ N(0, 1)) + nn.TransformerEncoder of 2 nn.TransformerEncoderLayer(64, 4, dim_feedforward=128,
  dropout=0.1, relu, batch_first=True, norm_first=False) called with src_key_padding_mask = (x == 0), the mean over
  each word's real positions, nn.Linear(64, 7). In training (gradients on) the encoder layer takes torch's regular
  path, not its inference fast path: what a user gets.
- wordlists_gru: nn.Embedding(vocab, 64, padding_idx=0) + nn.GRU(64, 128, batch_first=True) + nn.Linear(128, 7), the
  answer the GRU's state after each word's last real character. By default (--gru-torch packed) the embedded batch
  goes through nn.utils.rnn.pack_padded_sequence(lengths, batch_first=True, enforce_sorted=False), the documented
  PyTorch idiom for padded sequences, which steps each word only through its real characters (dltrain runs all 24
  steps and gathers the last real one); --gru-torch gather runs the padded batch and gathers output[i, length_i - 1],
  the same work as dltrain.

Both sides: cross_entropy; the config's optimizer (transformer: AdamW lr 0.002, weight decay 0.01 on the weight
matrices only, as dltrain's `decay` flags: not biases, layer norms, the embedding or the positional table; GRU: Adam
lr 0.002); the cosine schedule set every step from dltrain's formula (interval epoch: one epoch keeps the base rate);
gradient clipping by global L2 norm (clip_grad_norm_, 1.0 and 5.0); batch 128; a new permutation each epoch, each
batch gathered by index, every step's loss read with loss.item(). PyTorch's epoch is timed the same way, then it
evaluates the validation and test words as dltrain does (untimed, so that both peak memories cover the same work).
One-time costs inside the epoch count, as in a user's first epoch.

Each (case, framework) runs in its own process, so peak resident memory (ru_maxrss) is that process's alone, data and
imports included; the frameworks alternate within each repetition. 2 threads on every side (DLTRAIN_THREADS,
OMP/OpenBLAS/MKL, torch.set_num_threads), float32. Reported: median samples/second, dltrain / PyTorch, peak RSS.

--check instruments the dltrain child (a wrapper around its Trainer, outside the timed loop but for one call per
epoch) and compares it with the PyTorch child: training samples per epoch (the trainer's count, the samples its loop
saw, PyTorch's), steps per epoch, a SHA-256 of the training arrays, the number of parameters and the shapes of the
weight-decayed ones. A mismatch stops the script; a --check run writes no results.

--samples N draws the word lists' words_per_language (both sides: --set data.words_per_language=W) so that the
training split holds about N words: a smoke test of the script itself (it turns --check on). Such a run prints its
table but never writes RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = 2
EPOCHS = 1  # what the dltrain side is told with --set, and the schedule's horizon on the PyTorch side
HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "configs"
SECTION = "Text"  # RESULTS.md's "## Text..." section, which this script owns

CASES = {"wordlists_transformer": "wordlists_transformer.yaml", "wordlists_gru": "wordlists_gru.yaml"}


def options() -> argparse.Namespace:
    """--samples, --check, --gru-torch, taken off the command line (harness.arguments reads the shared options)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--samples", type=int)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--gru-torch", choices=("packed", "gather"), default="packed")
    known, sys.argv[1:] = parser.parse_known_args()
    if known.samples is not None and known.samples < 1:
        raise SystemExit("--samples: a positive number of training samples")
    return known


def overrides(case: str, samples: int | None) -> list[str]:
    """The --set expressions both sides apply to the shipped config: none, or a smaller words_per_language."""
    if not samples:
        return []
    from dltrain.config import load_config

    data = load_config(CONFIGS / CASES[case]).data
    kept = len(data["languages"]) * (1 - data["test_fraction"]) * (1 - data["val_fraction"])  # training per language
    return [f"data.words_per_language={math.ceil(samples / kept)}"]


def raw_config(case: str) -> dict:
    import yaml

    return yaml.safe_load((CONFIGS / CASES[case]).read_text())


def describe_case(case: str, gru_torch: str) -> str:
    """One line: the config, its optimizer, schedule, batch size and clipping, and the PyTorch translation's choice."""
    config = raw_config(case)
    optimizer = dict(config["optimizer"])
    name = optimizer.pop("name")
    training = config["training"]
    line = (f"{case}: configs/{CASES[case]}; {name} ({', '.join(f'{k} {v}' for k, v in optimizer.items())}), "
            f"{config.get('schedule', {}).get('name', 'constant')} schedule; batch {training['batch_size']}"
            + (f", grad_clip {training['grad_clip']}" if training.get("grad_clip") else ""))
    if case == "wordlists_gru":
        line += ("; PyTorch: pack_padded_sequence (real characters only)" if gru_torch == "packed" else
                 "; PyTorch: every padded step, the output gathered at each word's last character")
    return line


def data_line(case: str, samples: int | None) -> str:
    """The config's data in words: how many words of how many languages, what is held out."""
    from dltrain.config import load_config

    data = load_config(CONFIGS / CASES[case], overrides(case, samples)).data
    return (f"{data['words_per_language']:,} words of each of {len(data['languages'])} languages from Debian's word "
            f"lists, {data['test_fraction']:.0%} held out for test and {data['val_fraction']:.0%} of the rest for "
            f"validation, up to {data['text'].max_length} characters")


# ---------------------------------------------------------------- the PyTorch side


def torch_model(case: str, vocab: int, max_length: int, classes: int, gru_torch: str):
    """The config's model in PyTorch, as a user writes it (see the module docstring), and the names of the
    parameters that get weight decay (dltrain's decay flags: weight matrices, not biases, norms or tables)."""
    import torch
    from torch import nn

    config = raw_config(case)
    layers = [next(iter(spec)) if isinstance(spec, dict) else spec for spec in config["model"]]
    units = config["model"][0]["embedding"]["units"]
    torch.manual_seed(0)

    if case == "wordlists_transformer":
        expected = ["embedding", "positional_embedding", "transformer_encoder", "transformer_encoder", "mean_pool",
                    "linear"]
        encoder = config["model"][2]["transformer_encoder"]

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.embedding = nn.Embedding(vocab, units, padding_idx=0)
                self.position = nn.Parameter(torch.randn(max_length, units))
                layer = nn.TransformerEncoderLayer(units, encoder["heads"], dim_feedforward=encoder["ff_units"],
                                                   dropout=encoder["dropout"], activation="relu", batch_first=True,
                                                   norm_first=False)
                self.encoder = nn.TransformerEncoder(layer, num_layers=2)
                self.head = nn.Linear(units, classes)

            def forward(self, x):
                padding = x == 0
                h = self.embedding(x) + self.position[:x.shape[1]]
                h = self.encoder(h, src_key_padding_mask=padding)
                real = (~padding).unsqueeze(-1).to(h.dtype)
                return self.head((h * real).sum(dim=1) / real.sum(dim=1).clamp(min=1))

        no_decay = ("embedding.weight", "position")
    else:
        expected = ["embedding", "gru", "linear"]
        hidden = config["model"][1]["gru"]["units"]

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.embedding = nn.Embedding(vocab, units, padding_idx=0)
                self.gru = nn.GRU(units, hidden, batch_first=True)
                self.head = nn.Linear(hidden, classes)

            def forward(self, x):
                lengths = (x != 0).sum(dim=1)
                h = self.embedding(x)
                if gru_torch == "packed":
                    packed = nn.utils.rnn.pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
                    _, last = self.gru(packed)
                    return self.head(last[0])
                out, _ = self.gru(h)
                return self.head(out[torch.arange(len(x)), lengths - 1])

        no_decay = ("embedding.weight",)
    if layers != expected:
        raise SystemExit(f"configs/{CASES[case]}: its model {layers} is not the one this benchmark translates "
                         f"({expected}); update benchmarks/text.py")
    net = Net()
    decayed = {name for name, p in net.named_parameters() if p.ndim > 1 and name not in no_decay}
    return net, decayed


def torch_optimizer(net, decayed: set, options: dict):
    """dltrain's adam or adamw in torch.optim (the same formulas), weight decay on the `decayed` parameters only."""
    import torch

    options = dict(options)
    name = options.pop("name")
    if name not in ("adam", "adamw") or options.pop("decay_all", False):
        raise SystemExit(f"the benchmark's PyTorch translation has no optimizer {name} (with these options)")
    decay = options.pop("weight_decay", 0.01 if name == "adamw" else 0.0)
    params = list(net.named_parameters())
    groups = [{"params": [p for n, p in params if n in decayed], "weight_decay": decay},
              {"params": [p for n, p in params if n not in decayed], "weight_decay": 0.0}] if decay else \
        [{"params": [p for _, p in params], "weight_decay": 0.0}]
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    betas = (options.pop("beta1", 0.9), options.pop("beta2", 0.999))
    optimizer = kind(groups, lr=options.pop("lr", 0.001), betas=betas, eps=options.pop("eps", 1e-8))
    if options:
        raise SystemExit(f"the benchmark's PyTorch translation has no optimizer options {sorted(options)}")
    return optimizer


def run_torch(case: str, samples: int | None, check: bool, gru_torch: str) -> dict:
    """One epoch of the case in PyTorch on dltrain's own token arrays; then validation and test, untimed."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from cpu import lr_factor
    from torch import nn

    from dltrain.config import load_config
    from dltrain.training.model import build_for

    torch.set_num_threads(THREADS)
    config = load_config(CONFIGS / CASES[case], overrides(case, samples))
    built = build_for(config)  # dltrain's data pipeline: the words, split, vocabulary and padding the CLI trains on
    splits = built.splits
    if splits.padding_id != 0:
        raise SystemExit(f"the PyTorch models take padding id 0; dltrain's data pads with {splits.padding_id}")
    arrays = {}
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        x, y = np.asarray(split.x[:], np.float32), np.asarray(split.y, np.int64)
        if not np.array_equal(x, np.rint(x)):
            raise SystemExit(f"{name}: dltrain's inputs are not token ids")
        arrays[name] = (x, y)
    vocab, classes = int(built.info["vocab_size"]), int(splits.classes)
    del built, splits, split  # dltrain's model and its copy of the data: not the PyTorch process's memory
    raw = raw_config(case)
    training = raw["training"]
    batch, clip = training["batch_size"], training.get("grad_clip")
    if raw.get("loss", "cross_entropy") != "cross_entropy":
        raise SystemExit(f"the benchmark's PyTorch translation has no loss {raw['loss']}")
    data = {name: (torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y)) for name, (x, y) in arrays.items()}
    x, y = data["train"]
    n, max_length = x.shape
    steps = math.ceil(n / batch)
    net, decayed = torch_model(case, vocab, max_length, classes, gru_torch)
    opt = torch_optimizer(net, decayed, raw.get("optimizer", {"name": "adam"}))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(raw.get("schedule", {"name": "constant"}), EPOCHS,
                                                                 steps))

    net.train()
    start = time.perf_counter()
    order = torch.randperm(n)
    loss_sum, seen = 0.0, 0
    for step in range(steps):
        idx = order[step * batch:(step + 1) * batch]
        xb, yb = x[idx], y[idx]
        loss = F.cross_entropy(net(xb), yb)
        value = loss.item()
        opt.zero_grad()
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        schedule.step()
        loss_sum += value * len(idx)
        seen += len(idx)
    seconds = time.perf_counter() - start

    net.eval()
    eval_batch = training.get("eval_batch_size", 1024)
    with torch.no_grad():
        for name in ("val", "test"):
            xe, ye = data[name]
            for s in range(0, len(xe), eval_batch):
                F.cross_entropy(net(xe[s:s + eval_batch]), ye[s:s + eval_batch]).item()
    result = {"samples_per_second": n / seconds, "version": torch.__version__, "train_samples": n,
              "train_loss": loss_sum / n}
    if check:
        result["check"] = {
            "train samples per epoch": n, "samples the loop saw": seen, "steps per epoch": steps,
            "training data sha256": data_digest(*arrays["train"]),
            "parameters": sum(p.numel() for p in net.parameters()),
            "weight-decayed shapes": sorted(str(tuple(p.shape)) for group in opt.param_groups
                                            if group["weight_decay"] > 0 for p in group["params"]),
        }
    return result


def data_digest(x, y) -> str:
    """SHA-256 of the inputs as float32 and the labels as int64 (what both sides train on)."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes())
    digest.update(np.ascontiguousarray(y, np.int64).tobytes())
    return digest.hexdigest()


def worker(case: str, samples: int | None, check: bool, gru_torch: str) -> None:
    import resource

    result = run_torch(case, samples, check, gru_torch)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# ---------------------------------------------------------------- the dltrain side

# The CLI, in-process (so ru_maxrss is the run's), then summary.json's speed. With "check", a wrapper around the
# Trainer notes what it trained: the samples its tally saw (one extra call per epoch, in the loop's time) and, after
# fit returns, the rest (data digest, parameters), outside the timed loop.
DLTRAIN_WRAPPER = """
import json, resource, sys
from pathlib import Path
from dltrain.cli import main
config, run_dir, epochs, check, *sets = sys.argv[1:]
sys.argv = ["dltrain", "train", config, "--set", "training.epochs=" + epochs, "--set", "training.early_stopping=false",
            *[arg for expression in sets for arg in ("--set", expression)], "--run-dir", run_dir, "-q"]
noted = {}
if check == "check":
    import numpy as np
    from dltrain.training.trainer import Trainer
    sys.path.append(BENCHMARKS)
    from text import data_digest
    prepare_steps, fit = Trainer.prepare_steps, Trainer.fit

    def noting_prepare_steps(self):
        prepare_steps(self)
        finish = self.tally.finish_epoch

        def finish_epoch():
            result = finish()
            noted["samples the loop saw"] = int(result[2])
            return result
        self.tally.finish_epoch = finish_epoch

    def noting_fit(self):
        summary = fit(self)
        train = self.splits.train
        noted.update({"train samples per epoch": self.trained_samples // int(epochs),  # summary.json's numerator
                      "steps per epoch": self.steps_per_epoch,
                      "training data sha256": data_digest(np.asarray(train.x[:], np.float32), np.asarray(train.y)),
                      "parameters": sum(int(p.data.size) for p in self.optimizer.params),
                      "weight-decayed shapes": sorted(str(tuple(p.shape)) for p in self.optimizer.params
                                                      if self.optimizer.decays(p))})
        return summary
    Trainer.prepare_steps, Trainer.fit = noting_prepare_steps, noting_fit
try:
    main()
except SystemExit as done:
    if done.code:
        raise
summary = json.loads((Path(run_dir) / "summary.json").read_text())
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"samples_per_second": summary["train_samples_per_second"], "peak_mb": peak_mb,
                  **({"check": noted} if noted else {})}))
""".replace("BENCHMARKS", repr(str(HERE)))


# ---------------------------------------------------------------- orchestration


def measure(framework: str, case: str, folder: Path, opts: argparse.Namespace) -> dict:
    """One child process: the dltrain CLI on the shipped config, or this script's PyTorch worker."""
    env = {**os.environ, "DLTRAIN_THREADS": str(THREADS), "OMP_NUM_THREADS": str(THREADS),
           "OPENBLAS_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    if framework == "dltrain":
        run_dir = Path(tempfile.mkdtemp(prefix=f"run-{case}-", dir=folder))
        command = [sys.executable, "-c", DLTRAIN_WRAPPER, str(CONFIGS / CASES[case]), str(run_dir), str(EPOCHS),
                   "check" if opts.check else "-", *overrides(case, opts.samples)]
    else:
        command = [sys.executable, __file__, "--worker", framework, case, "--gru-torch", opts.gru_torch] + \
            (["--samples", str(opts.samples)] if opts.samples else []) + (["--check"] if opts.check else [])
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{framework} {case} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(case: str, runs: dict) -> bool:
    """Print what both sides trained on (from --check) side by side; True when every figure agrees."""
    ok = True
    for rep, (mine, theirs) in enumerate(zip(runs["dltrain"], runs["torch"], strict=True)):
        a, b = mine.get("check", {}), theirs.get("check", {})
        for key in dict.fromkeys([*b, *a]):
            same = a.get(key) == b.get(key)
            ok &= same
            if rep == 0 or not same:
                shown = [v if not isinstance(v, list) else f"{len(v)} ({', '.join(v)})" for v in (a.get(key),
                                                                                                   b.get(key))]
                print(f"  check {case}: {key}: dltrain {shown[0]}, PyTorch {shown[1]}: "
                      f"{'same' if same else 'DIFFERENT'}", flush=True)
    return ok


def main() -> None:
    from harness import alternating, arguments  # (benchmarks/ is on sys.path when this script runs)

    opts = options()
    args = arguments(__doc__, CASES, reps=3)
    if args.worker:
        worker(args.worker[1], opts.samples, opts.check, opts.gru_torch)
        return
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; the cases: {', '.join(CASES)}")
    if opts.samples:
        opts.check = True
        print(f"WARNING: --samples {opts.samples}: a smoke test on about {opts.samples} training words, not the "
              "benchmark; its numbers are not comparable and RESULTS.md is not written", flush=True)
    results, agreed = {}, True
    with tempfile.TemporaryDirectory(prefix="dltrain-text-bench-") as tmp:
        for case in cases:
            runs = results[case] = alternating(case, ["dltrain", "torch"], args.reps,
                                               lambda f, c: measure(f, c, Path(tmp), opts))
            print(case, {f: round(statistics.median(r["samples_per_second"] for r in v)) for f, v in runs.items()},
                  flush=True)
            if opts.check:
                agreed &= compare(case, runs)
    text = results_section(results, args, opts)
    if opts.samples or opts.check:
        print("\n" + text)
        if not agreed:
            raise SystemExit("check: the two sides did not train the same thing (DIFFERENT above)")
        print(f"check: both sides trained the same samples, data and parameters\nWARNING: "
              f"{f'--samples {opts.samples} (smoke test)' if opts.samples else '--check'}: {args.out} not written")
        return
    from harness import replace_section

    replace_section(Path(args.out), SECTION, text)  # cpu.py's top part and the other sections stay
    print(f"wrote {args.out} (section '## {SECTION}')")


def results_section(results: dict, args, opts) -> str:
    """The '## Text' section of RESULTS.md: the machine, the table of medians, what each case is, every repetition."""
    import platform

    import numpy  # noqa: F401 (loaded, so that blas_kernel finds its BLAS)
    from cpu import blas_kernel

    torch_version = next((r.get("version") for runs in results.values() for r in runs["torch"]), "?")
    command = "python benchmarks/text.py" + (f" --gru-torch {opts.gru_torch}" if opts.gru_torch != "packed" else "")
    lines = [
        f"## {SECTION}: `dltrain train` on the word-list configs against PyTorch, one epoch",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {THREADS} threads per side; "
        f"BLAS: {blas_kernel()}; PyTorch {torch_version}; date {time.strftime('%Y-%m-%d')}, {args.reps} "
        f"repetitions, medians. Command: `{command}`.",
        "",
        "| case | training words | dltrain samples/s | PyTorch samples/s | ratio | dltrain peak MB | PyTorch peak MB "
        "| memory ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, runs in results.items():
        speed = {f: statistics.median(r["samples_per_second"] for r in v) for f, v in runs.items()}
        memory = {f: statistics.median(r["peak_mb"] for r in v) for f, v in runs.items()}
        lines.append(f"| {case} | {runs['torch'][0]['train_samples']:,} | {speed['dltrain']:,.0f} | "
                     f"{speed['torch']:,.0f} | {speed['dltrain'] / speed['torch']:.2f} | {memory['dltrain']:.0f} | "
                     f"{memory['torch']:.0f} | {memory['dltrain'] / memory['torch']:.2f} |")
    lines += [
        "",
        "samples/s: training words over the seconds of one epoch's training loop (dltrain: summary.json's "
        "train_samples_per_second of `dltrain train CONFIG --set training.epochs=1 --set "
        "training.early_stopping=false -q`; PyTorch: the same loop on the same token arrays, taken from dltrain's data "
        "pipeline, timed the same way); ratio = dltrain / PyTorch; peak MB = the process's maximum resident set "
        "(data, imports, validation and test evaluation included; dltrain's also its checkpoints and curves.png). "
        "PyTorch's transformer is nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, 0.1, "
        "batch_first=True), 2) with src_key_padding_mask, in training its regular (not fast) path; "
        "the docstring of benchmarks/text.py gives both translations.",
        "",
        f"The cases ({data_line(next(iter(results)), opts.samples)}; the same on both sides):",
        "",
        *[f"- {describe_case(case, opts.gru_torch)}" for case in results],
        "",
        "Every repetition, samples/s (to show the spread; the table gives medians):",
        "",
    ]
    for case, runs in results.items():
        for framework, values in runs.items():
            lines.append(f"- {case} {framework}: " + ", ".join(f"{r['samples_per_second']:,.0f}" for r in values))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
