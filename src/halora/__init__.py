"""halora: LoRA-finetuned LLMs on hybrid RRAM/SRAM compute-in-memory hardware.

Data flows one way:
    model (models) -> placement (cim) -> adapter (lora) -> training (train)
    -> programmed chip (cim + noise) -> evaluation (evaluate) -> report (report)
The energy model (energy) reads only configs.
"""

import os

# halora never downloads: models and data come from local files and installed packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
