"""The ``lama`` command: train a GPT from a named recipe, and generate text from a checkpoint.

Covers::

    lama train --config shakespeare-char [--out DIR] [--resume] [key=value ...]
    lama generate [--checkpoint PATH] -p "prompt" [-n 300] [--temperature 0.8] [--top-k K]
                  [--top-p P] [--greedy] [--seed 0]
    python -m lama.gpt -p "How can entropy be reversed?"      (= lama generate ...)

``key=value`` overrides any field of the recipe's ``GPTConfig`` or ``TrainConfig`` (or its
data settings), e.g. ``n_layer=2 max_iters=500 device=cpu``; ``model.dropout=0.1`` names the
section explicitly. Checkpoints go to ``checkpoints/<config>`` by default and hold the
tokenizer's vocabulary, so ``generate`` needs nothing else. ``PRETRAINED`` maps names of
published weights (``gpt2``, the default, and its larger siblings) to loaders, so
``--checkpoint NAME`` works for them too; offline, one message says how to get them.
Leaves out: word- and BPE-level recipes (the chapters build those in code) and serving.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import fields
from pathlib import Path
from typing import Callable

__all__ = ["RECIPES", "PRETRAINED", "build_configs", "load_char_data", "load_for_generation", "generate_text", "main"]

# Named recipes: data settings, GPTConfig fields, TrainConfig fields.
RECIPES: dict[str, dict[str, dict]] = {
    # A character-level GPT on Tiny Shakespeare sized for a laptop CPU (a few minutes);
    # benchmarks/bench_train.py compares it with the classic small reference recipe.
    "shakespeare-char": {
        "data": {"dataset": "tinyshakespeare", "tokenizer": "char", "val_fraction": 0.1},
        # Against the classic small recipe (4 layers, block 64, learned positions, lr 1e-3): a
        # longer context, rotary positions, no biases, a 3x higher peak learning rate, and 2
        # layers instead of 4 — on a CPU budget of about a minute and a half, more steps of a
        # shallower model beat fewer of a deeper one (benchmarks/bench_train.py; measured at
        # equal compute: 4 layers 1.76, 3 layers 1.73, 2 layers 1.69 validation loss).
        "model": {"block_size": 128, "n_layer": 2, "n_head": 4, "n_embd": 128, "dropout": 0.0, "bias": False,
                  "positional": "rope"},
        "train": {"max_iters": 1000, "batch_size": 12, "lr": 3e-3, "min_lr": 3e-4, "warmup_iters": 50,
                  "weight_decay": 0.1, "beta2": 0.99, "grad_clip": 1.0, "eval_interval": 200, "eval_iters": 20},
    },
}

# Published weights by name: name -> loader() returning (model, tokenizer).
PRETRAINED: dict[str, Callable] = {}


def _gpt2_loader(name: str) -> Callable:
    """OpenAI's GPT-2 with lama's GPT-2 tokenizer (lama.pretrained); offline: one message on getting the weights."""
    def load():
        from lama.pretrained import WeightsUnavailableError, gpt2_for_generation
        try:
            return gpt2_for_generation(name)
        except WeightsUnavailableError as e:
            raise CLIError(str(e)) from None
    return load


PRETRAINED.update({name: _gpt2_loader(name) for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")})

DEFAULT_CHECKPOINT = Path("checkpoints") / "shakespeare-char"


class CLIError(ValueError):
    """A user error the command reports in one line (exit status 2)."""


# --- configuration -------------------------------------------------------------------------

def _parse_value(raw: str, current):
    """``raw`` (text from the command line) as the type of the field's current value."""
    if isinstance(current, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise CLIError(f"expected true/false, got {raw!r}")
    if raw.lower() == "none":
        return None
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            raise CLIError(f"expected an int, got {raw!r}") from None
    if isinstance(current, float) or current is None:
        try:
            v = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
        return float(v) if isinstance(current, float) and isinstance(v, int) else v
    return raw


def build_configs(name: str, overrides: list[str] = ()):
    """The recipe ``name`` with ``key=value`` overrides applied: (data dict, GPTConfig, TrainConfig)."""
    from lama.gpt import GPTConfig
    from lama.train import TrainConfig

    if name not in RECIPES:
        raise CLIError(f"unknown config {name!r}; known configs: {sorted(RECIPES)}")
    sections = {"data": dict(RECIPES[name]["data"]),
                "model": {**{f.name: f.default for f in fields(GPTConfig)}, **RECIPES[name]["model"]},
                "train": {**{f.name: f.default for f in fields(TrainConfig)}, **RECIPES[name]["train"]}}
    for item in overrides:
        if "=" not in item:
            raise CLIError(f"overrides are key=value, got {item!r}")
        key, raw = item.split("=", 1)
        if "." in key:
            section, field = key.split(".", 1)
            if section not in sections or field not in sections[section]:
                raise CLIError(f"unknown setting {key!r}")
        else:
            field = key
            owners = [s for s in sections if key in sections[s]]
            if not owners:
                known = sorted(k for s in sections.values() for k in s)
                raise CLIError(f"unknown setting {key!r}; known settings: {known}")
            if len(owners) > 1:
                raise CLIError(f"setting {key!r} is ambiguous; write one of {[f'{s}.{key}' for s in owners]}")
            section = owners[0]
        try:
            sections[section][field] = _parse_value(raw, sections[section][field])
        except CLIError as e:
            raise CLIError(f"{section}.{field}: {e}") from None
    if isinstance(sections["train"]["eval_splits"], list):
        sections["train"]["eval_splits"] = tuple(sections["train"]["eval_splits"])
    return sections["data"], GPTConfig(**sections["model"]), TrainConfig(**sections["train"])


def load_char_data(data: dict):
    """(CharTokenizer, {"train": ids, "val": ids}) for a recipe's data settings (the last val_fraction is val)."""
    from lama.data import load_text
    from lama.tokenizers import CharTokenizer

    if data.get("tokenizer") != "char":
        raise CLIError(f"the CLI trains character-level recipes only, got tokenizer={data.get('tokenizer')!r}")
    text = load_text(data["dataset"])
    tok = CharTokenizer.from_corpus(text)
    import torch
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    n = int(len(ids) * (1 - data["val_fraction"]))
    return tok, {"train": ids[:n], "val": ids[n:]}


# --- generation ----------------------------------------------------------------------------

def _tokenizer_from_meta(meta: dict, where):
    from lama.tokenizers import CharTokenizer

    spec = (meta or {}).get("tokenizer")
    if not spec or spec.get("type") != "char":
        raise CLIError(f"checkpoint {where} does not say which tokenizer it was trained with")
    return CharTokenizer(spec["chars"])


def load_for_generation(checkpoint, device=None):
    """(model, tokenizer) from a checkpoint folder written by ``lama train``, or from a name in ``PRETRAINED``."""
    from lama.gpt import GPT
    from lama.train import load_checkpoint_config

    if str(checkpoint) in PRETRAINED:
        return PRETRAINED[str(checkpoint)]()
    path = Path(checkpoint)
    if not path.exists() and not path.with_name(path.name + ".old").exists():
        hint = " (train one with `lama train --config shakespeare-char`)" if path == DEFAULT_CHECKPOINT else ""
        names = f"; or a published model: {sorted(PRETRAINED)}" if PRETRAINED else ""
        raise CLIError(f"no checkpoint at {path}{hint}{names}")
    if (path / "config.json").is_file() and '"model_type": "gpt2"' in (path / "config.json").read_text():
        return _gpt2_loader(str(path))()  # a Hugging Face GPT-2 folder (config.json + model.safetensors)
    model = GPT.from_checkpoint(path, device=device)
    return model, _tokenizer_from_meta(load_checkpoint_config(path).get("meta"), path)


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 300, *, temperature: float = 0.8,
                  top_k: int | None = None, top_p: float | None = None, do_sample: bool = True,
                  seed: int = 0) -> str:
    """The prompt followed by ``max_new_tokens`` generated tokens, as text."""
    import torch

    if not isinstance(prompt, str) or not prompt:
        raise CLIError("the prompt is empty: give at least one character with -p")
    known = getattr(tokenizer, "stoi", None)
    if known is not None:
        unknown = sorted({c for c in prompt if c not in known})
        if unknown:
            raise CLIError(f"the prompt has characters the tokenizer does not know: {unknown} "
                           f"(it knows {len(known)} characters)")
    dev = next(model.parameters()).device
    idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=dev)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         do_sample=do_sample, generator=torch.Generator().manual_seed(seed))
    return tokenizer.decode(out[0].tolist())


# --- commands ------------------------------------------------------------------------------

def _train(args) -> int:
    import torch

    from lama.gpt import GPT
    from lama.train import Trainer

    data, model_cfg, train_cfg = build_configs(args.config, args.overrides)
    out = Path(args.out or Path("checkpoints") / args.config)
    train_cfg.checkpoint_dir = str(out)
    tok, splits = load_char_data(data)
    if model_cfg.vocab_size != tok.vocab_size:
        model_cfg.vocab_size = tok.vocab_size
    torch.manual_seed(train_cfg.seed)
    model = GPT(model_cfg)
    from lama.train import lm_batches
    meta = {"recipe": args.config, "data": data, "tokenizer": {"type": "char", "chars": tok.itos}}
    resume = out if args.resume and out.exists() else None
    trainer = Trainer(model, train_cfg, lm_batches(splits, model_cfg.block_size), model_config=model_cfg,
                      meta=meta, resume_from=resume)
    if trainer.is_main:
        print(f"{args.config}: {model.num_params() / 1e6:.2f}M parameters, {train_cfg.max_iters} steps, "
              f"device {trainer.device}, checkpoints in {out}" + (f" (resuming at step {trainer.step})" if resume else ""))
    try:
        h = trainer.train()
    except KeyboardInterrupt as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    if trainer.is_main:
        print(f"step {trainer.step}: train loss {h['train_loss'][-1]:.4f}, val loss {h['val_loss'][-1]:.4f}")
        print(generate_text(trainer.raw_model, tok, "\n", 200, seed=train_cfg.seed))
    return 0


def _generate(args) -> int:
    model, tok = load_for_generation(args.checkpoint, device=args.device)
    print(generate_text(model, tok, args.prompt, args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k, top_p=args.top_p, do_sample=not args.greedy, seed=args.seed))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lama", description="Train and sample the book's GPT.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a GPT from a named recipe")
    t.add_argument("--config", default="shakespeare-char", help=f"recipe name, one of {sorted(RECIPES)}")
    t.add_argument("--out", help="checkpoint folder (default: checkpoints/<config>)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out if there is one")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="override a setting, e.g. max_iters=500")
    g = sub.add_parser("generate", help="generate text from a checkpoint")
    g.add_argument("--checkpoint", default="gpt2",
                   help="checkpoint folder written by `lama train` (e.g. checkpoints/shakespeare-char), "
                        "or a published model's name (default: gpt2)")
    g.add_argument("-p", "--prompt", required=True)
    g.add_argument("-n", "--max-new-tokens", type=int, default=300)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--greedy", action="store_true", help="always take the most likely token")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    from lama.train import CheckpointError

    args = _parser().parse_args(argv)
    try:
        return _train(args) if args.command == "train" else _generate(args)
    except (CLIError, CheckpointError, ValueError) as e:
        print(f"lama {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
