"""File names of a pisces LoRA checkpoint (no torch import: ``pisces inspect`` reads them)."""

from __future__ import annotations

#: the diffusers-format LoRA file of each transformer component (``pipeline.load_lora_weights(folder)``)
DIFFUSERS_WEIGHT_NAMES = {
    "transformer": "pytorch_lora_weights.safetensors",
    "transformer_2": "pytorch_lora_weights_transformer_2.safetensors",
}
#: the sub-folder of each component's peft-format LoRA ("" = the checkpoint folder itself)
PEFT_SUBDIRS = {"transformer": "", "transformer_2": "transformer_2"}
#: pisces' description of the checkpoint's LoRA (backbone, rank, alpha, targets, step)
METADATA_FILE = "pisces_lora.json"
