"""Pretrained weights: reading them safely and mapping Hugging Face names onto lama's.

Covers: ``read_state_dict`` (a ``.safetensors`` file, a sharded index, or a PyTorch file read
with ``torch.load(weights_only=True)`` — never arbitrary pickles), checked so that a truncated
or corrupted file fails with an error naming the file and the tensor; ``find_weights`` (the
weights file in a Hugging Face model folder); the explicit name tables ``bert_name_table`` and
``gpt2_name_table``; ``map_state_dict`` which applies a table and checks every shape against
the model built from ``config.json``; and ``gpt2_dir`` which finds GPT-2's files locally or
downloads them once from the Hugging Face Hub.
Leaves out: the models themselves (``lama.bert``, ``lama.gpt``), other architectures, and
quantised or half-precision checkpoints (tensors are converted to float32).
"""

from __future__ import annotations

import json
import math
import socket
import struct
from pathlib import Path
from urllib.parse import urlparse

import torch

__all__ = [
    "WeightsError", "WeightsUnavailableError", "read_state_dict", "find_weights", "read_config",
    "map_state_dict", "strip_prefix", "bert_name_table", "gpt2_name_table", "GPT2_MODELS", "gpt2_dir", "load_gpt2",
    "gpt2_for_generation",
]


class WeightsError(ValueError):
    """A weights file that cannot be used: unreadable, truncated, or not matching the model."""


class WeightsUnavailableError(FileNotFoundError):
    """Weights that are neither on this machine nor downloadable right now."""


# --- reading files ------------------------------------------------------------------------

# Bytes per element of every safetensors dtype.
_ST_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
                   "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _check_safetensors(path: Path) -> None:
    """Validate a safetensors file's header against its size, naming the first bad tensor.

    Layout: 8 bytes little-endian header length N, N bytes of JSON ``{name: {dtype, shape,
    data_offsets: [begin, end]}}``, then the data section the offsets point into.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path}: only {size} bytes, too short to be a safetensors file (truncated?)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise WeightsError(f"{path}: header claims {n} bytes but the file has {size} (truncated or not safetensors)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsError(f"{path}: the safetensors header is not valid JSON ({e}); the file is corrupted") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: the safetensors header is not a JSON object; the file is corrupted")
    data_size = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            nbytes = math.prod(info["shape"]) * _ST_DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
        if end - begin != nbytes:
            raise WeightsError(f"{path}: tensor {name!r} of shape {info['shape']} ({info['dtype']}) needs {nbytes} "
                               f"bytes but its offsets span {end - begin}; the file is corrupted")
        if end > data_size:
            raise WeightsError(f"{path}: tensor {name!r} ends at byte {end} of the data section but the file holds "
                               f"only {data_size} bytes of data; the file is truncated")


def _read_one(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        _check_safetensors(path)
        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as e:
            raise WeightsError(f"{path}: cannot read the safetensors file: {e}") from None
    if path.suffix in (".bin", ".pt", ".pth"):
        import pickle

        try:
            # weights_only=True: only tensors and plain containers are unpickled; a file that
            # tries to build any other object (and so could run code) is refused.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise WeightsError(f"{path}: refused by torch.load(weights_only=True) — the file holds more than "
                               f"tensors, which could run code when loaded: {str(e).splitlines()[0]}") from None
        except (RuntimeError, EOFError, OSError) as e:
            raise WeightsError(f"{path}: cannot read the PyTorch file (truncated or corrupted?): {e}") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightsError(f"{path}: expected a dict of tensors (a state_dict), got {type(state).__name__}")
        return state
    raise WeightsError(f"{path}: unknown weights format {path.suffix!r}; expected .safetensors, .bin, .pt or .pth")


def read_state_dict(path: str | Path, check_finite: bool = True) -> dict[str, torch.Tensor]:
    """All tensors of a weights file (or of every shard listed in a ``*.index.json``).

    ``check_finite``: a floating-point tensor holding NaN or ±inf is reported by name, since
    it means a corrupted file (no trained network stores them).
    """
    path = Path(path)
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (OSError, KeyError, json.JSONDecodeError) as e:
            raise WeightsError(f"{path}: not a valid shard index ({e})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(_read_one(path.parent / shard))
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise WeightsError(f"{path}: tensor {missing[0]!r} is listed in the index but not in its shard")
    else:
        state = _read_one(path)
    if check_finite:
        for name, t in state.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise WeightsError(f"{path}: tensor {name!r} contains NaN or infinite values; the file is corrupted")
    return state


def find_weights(folder: str | Path) -> Path:
    """The weights file in a Hugging Face model folder, preferring safetensors."""
    folder = Path(folder)
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json"):
        if (folder / name).is_file():
            return folder / name
    raise WeightsError(f"{folder}: no model.safetensors (or pytorch_model.bin) in this folder")


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: missing; a model folder needs config.json next to its weights") from None
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: not valid JSON ({e})") from None


# --- name tables --------------------------------------------------------------------------
# A table maps each lama parameter name to (source names, how to combine them). Sources are
# the Hugging Face names without the model-class prefix ("bert.", "transformer.").
#   "copy": one source, as is;  "T": one source, transposed (GPT-2's Conv1D stores (in, out),
#   nn.Linear stores (out, in));  "cat": several sources stacked along dim 0 (BERT's separate
#   query/key/value become lama's fused c_attn, laid out [q | k | v]).

def bert_name_table(n_layer: int) -> dict[str, tuple[tuple[str, ...], str]]:
    """lama ``Bert`` name -> (Hugging Face ``BertModel`` names, op)."""
    t = {
        "embeddings.tok.weight": (("embeddings.word_embeddings.weight",), "copy"),
        "embeddings.pos.weight": (("embeddings.position_embeddings.weight",), "copy"),
        "embeddings.tok_type.weight": (("embeddings.token_type_embeddings.weight",), "copy"),
        "embeddings.ln.weight": (("embeddings.LayerNorm.weight",), "copy"),
        "embeddings.ln.bias": (("embeddings.LayerNorm.bias",), "copy"),
    }
    for i in range(n_layer):
        hf, me = f"encoder.layer.{i}.", f"layers.{i}."
        for p in ("weight", "bias"):
            t[me + f"attn.c_attn.{p}"] = (tuple(hf + f"attention.self.{n}.{p}" for n in ("query", "key", "value")), "cat")
            t[me + f"attn.c_proj.{p}"] = ((hf + f"attention.output.dense.{p}",), "copy")
            t[me + f"ln_1.{p}"] = ((hf + f"attention.output.LayerNorm.{p}",), "copy")
            t[me + f"mlp.c_fc.{p}"] = ((hf + f"intermediate.dense.{p}",), "copy")
            t[me + f"mlp.c_proj.{p}"] = ((hf + f"output.dense.{p}",), "copy")
            t[me + f"ln_2.{p}"] = ((hf + f"output.LayerNorm.{p}",), "copy")
    return t


BERT_POOLER_TABLE = {f"dense.{p}": ((f"pooler.dense.{p}",), "copy") for p in ("weight", "bias")}
BERT_MLM_TABLE = {
    "transform.weight": (("cls.predictions.transform.dense.weight",), "copy"),
    "transform.bias": (("cls.predictions.transform.dense.bias",), "copy"),
    "ln.weight": (("cls.predictions.transform.LayerNorm.weight",), "copy"),
    "ln.bias": (("cls.predictions.transform.LayerNorm.bias",), "copy"),
    "bias": (("cls.predictions.bias",), "copy"),  # the decoder's weight is tied to embeddings.tok
}


def gpt2_name_table(n_layer: int) -> dict[str, tuple[tuple[str, ...], str]]:
    """lama ``GPT`` name -> (Hugging Face ``GPT2Model`` names, op); ``lm_head`` is tied to ``wte``."""
    t = {
        "transformer.wte.weight": (("wte.weight",), "copy"),
        "transformer.wpe.weight": (("wpe.weight",), "copy"),
        "transformer.ln_f.weight": (("ln_f.weight",), "copy"),
        "transformer.ln_f.bias": (("ln_f.bias",), "copy"),
    }
    for i in range(n_layer):
        for name in ("ln_1", "ln_2"):
            for p in ("weight", "bias"):
                t[f"transformer.h.{i}.{name}.{p}"] = ((f"h.{i}.{name}.{p}",), "copy")
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):  # Conv1D layers
            t[f"transformer.h.{i}.{name}.weight"] = ((f"h.{i}.{name}.weight",), "T")
            t[f"transformer.h.{i}.{name}.bias"] = ((f"h.{i}.{name}.bias",), "copy")
    return t


def strip_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Drop a model-class prefix ("bert.", "transformer.") and rename TF-era gamma/beta to weight/bias."""
    out = {}
    for name, t in state.items():
        for p in prefixes:
            if name.startswith(p):
                name = name[len(p):]
                break
        if name.endswith(".gamma"):
            name = name[:-6] + ".weight"
        elif name.endswith(".beta"):
            name = name[:-5] + ".bias"
        out[name] = t
    return out


def map_state_dict(source: dict[str, torch.Tensor], table: dict, expected: dict[str, torch.Tensor],
                   where: str, what: str = "config.json") -> dict[str, torch.Tensor]:
    """Apply ``table`` to ``source``; check each result's shape against ``expected`` (a model's state_dict).

    Errors name ``where`` (the file) and the tensor: a missing tensor, or a shape that does
    not match the model built from ``what``.
    """
    out = {}
    for name, (sources, op) in table.items():
        for s in sources:
            if s not in source:
                raise WeightsError(f"{where}: tensor {s!r} is missing (needed for lama's {name!r})")
        ts = [source[s] for s in sources]
        if op == "cat":
            shapes = {tuple(t.shape[1:]) for t in ts}
            if len(shapes) != 1:
                raise WeightsError(f"{where}: tensors {sources} have different shapes {[tuple(t.shape) for t in ts]}")
            t = torch.cat(ts, dim=0)
        elif op == "T":
            if ts[0].dim() != 2:
                raise WeightsError(f"{where}: tensor {sources[0]!r} should be a matrix, got shape {tuple(ts[0].shape)}")
            t = ts[0].t()
        else:
            t = ts[0]
        want = tuple(expected[name].shape)
        if tuple(t.shape) != want:
            got = " + ".join(str(tuple(x.shape)) for x in ts)
            hint = " (transposed)" if op == "T" else ""
            raise WeightsError(f"{where}: tensor {sources[0]!r} has shape {got}{hint} but the model built from "
                               f"{what} expects {want} for {name!r}; the config does not match the weights")
        t = t.to(expected[name].dtype)
        # A transposed matrix stays a view: GPT-2's (in, out) memory layout, seen by nn.Linear
        # as its (out, in) weight. Decoding one token multiplies a vector by every matrix, a
        # pass bound by memory bandwidth, and on CPUs reading (in, out) rows is the faster way
        # (benchmarks/bench_generate.py: about a fifth faster than a contiguous (out, in) copy).
        out[name] = t if op == "T" else t.contiguous()
    return out


# --- GPT-2 from the Hugging Face Hub ------------------------------------------------------------

GPT2_MODELS = {  # name -> Hub repository (parameters)
    "gpt2": "openai-community/gpt2",                # 124M
    "gpt2-medium": "openai-community/gpt2-medium",  # 350M
    "gpt2-large": "openai-community/gpt2-large",    # 774M
    "gpt2-xl": "openai-community/gpt2-xl",          # 1558M
}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the Hub? (Fails in a second offline instead of retrying for ~25 s.)"""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def gpt2_dir(name_or_dir: str | Path) -> Path:
    """A folder with GPT-2's ``config.json`` and ``model.safetensors``: a local folder as given, or
    one of ``GPT2_MODELS`` from the Hugging Face cache, downloaded there once when online."""
    p = Path(name_or_dir).expanduser()
    if p.is_dir():
        return p
    name = str(name_or_dir)
    if name not in GPT2_MODELS:
        raise ValueError(f"name_or_dir must be one of {sorted(GPT2_MODELS)} or an existing folder, got {name!r}")
    from huggingface_hub import hf_hub_download

    repo = GPT2_MODELS[name]
    files = ("config.json", "model.safetensors")
    try:  # the cache first: no network at all
        return Path([hf_hub_download(repo, f, local_files_only=True) for f in files][-1]).parent
    except OSError:  # not cached (LocalEntryNotFoundError): try the network below
        pass
    reason = "no connection to the Hugging Face Hub"
    if _hub_reachable():
        try:
            paths = [hf_hub_download(repo, f) for f in files]
            return Path(paths[-1]).parent
        except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    raise WeightsUnavailableError(
        f"GPT-2 weights {name!r} are not on this machine and cannot be downloaded ({reason}). "
        f"Run once with internet access (they are cached by huggingface_hub), or download config.json and "
        f"model.safetensors from https://huggingface.co/{repo} into a folder and pass that folder instead of {name!r} "
        f"(`GPT.from_pretrained(folder)`, or `--checkpoint folder` on the command line)."
    )


def gpt2_config_kwargs(hf: dict, where: str) -> dict:
    """GPTConfig keyword arguments for a Hugging Face GPT-2 ``config.json``; refuses variants lama does not model."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise WeightsError(f"{where}: model_type={hf.get('model_type')!r}, expected 'gpt2'")
    checks = {"activation_function": ("gelu_new", "gelu_pytorch_tanh"), "layer_norm_epsilon": (1e-5,),
              "scale_attn_by_inverse_layer_idx": (False,), "add_cross_attention": (False,),
              "n_inner": (None, 4 * hf.get("n_embd", 768))}
    for key, allowed in checks.items():
        if key in hf and hf[key] not in allowed:
            raise WeightsError(f"{where}: {key}={hf[key]!r} is not supported (lama's GPT-2 needs one of {allowed})")
    try:
        return dict(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                    n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=0.0, bias=True)
    except KeyError as e:
        raise WeightsError(f"{where}: missing field {e.args[0]!r}") from None


def load_gpt2_state(folder: Path, model_state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Read a GPT-2 folder's weights and map them onto lama's names (checked against ``model_state``)."""
    path = find_weights(folder)
    source = strip_prefix(read_state_dict(path), ("transformer.",))
    table = gpt2_name_table(n_layer)
    used = {s for sources, _ in table.values() for s in sources}
    # Buffers old checkpoints carry (the causal mask and its fill value) and the tied head.
    ignorable = lambda n: n.endswith((".attn.bias", ".attn.masked_bias")) or n == "lm_head.weight"  # noqa: E731
    unknown = sorted(n for n in source if n not in used and not ignorable(n))
    if unknown:
        raise WeightsError(f"{path}: tensor {unknown[0]!r} has no place in lama's GPT-2 ({len(unknown)} unused tensors)")
    state = map_state_dict(source, table, model_state, str(path))
    if "lm_head.weight" in source and not torch.equal(source["lm_head.weight"], source["wte.weight"]):
        raise WeightsError(f"{path}: tensor 'lm_head.weight' differs from 'wte.weight'; lama's GPT ties them")
    return state


def load_gpt2(cls, name_or_dir):
    """Build ``cls`` (lama's ``GPT``) with GPT-2's configuration and weights; see ``GPT.from_pretrained``."""
    from lama.gpt import GPTConfig

    folder = gpt2_dir(name_or_dir)
    config = GPTConfig(**gpt2_config_kwargs(read_config(folder), str(folder / "config.json")))
    # Build the model on the "meta" device (shapes, no memory, no random initialisation — which
    # for gpt2-xl would take longer than reading the file), then adopt the file's tensors as
    # the parameters. Only possible when the model has no buffers that its constructor computes.
    with torch.device("meta"):
        model = cls(config)
    on_meta = not list(model.buffers())
    if not on_meta:
        model = cls(config)
    state = load_gpt2_state(folder, model.state_dict(), config.n_layer)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=on_meta)
    if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is wte itself
        raise WeightsError(f"{folder}: name table out of step with the model: missing {missing}, unexpected {unexpected}")
    model.lm_head.weight = model.transformer.wte.weight  # re-tie (assign replaced wte's Parameter)
    return model.eval()


def gpt2_for_generation(name_or_dir: str = "gpt2", device=None):
    """(GPT-2 model, lama's GPT-2 tokenizer), for ``lama generate --checkpoint gpt2``; model on ``device``
    (default: ``lama.device()``)."""
    from lama.gpt import GPT
    from lama.runtime import device as best_device
    from lama.tokenizers.gpt2 import gpt2_tokenizer

    return GPT.from_pretrained(name_or_dir, device=device or best_device()), gpt2_tokenizer()
