"""Servable model files without training."""

from __future__ import annotations

from pathlib import Path


def random_adapter_release(cache: Path, out: Path, adapters: int = 2, seed: int = 0, base_name: str = "tiny-llama",
                           std: float = 0.02) -> tuple[Path, list[Path]]:
    """Real GGUF files to serve without a training run (tests, benchmarks, drills): a base
    model's file (the tiny random Llama unless ``base_name`` says) and LoRA adapters with random
    B matrices (normal, ``std``: larger makes the adapters' answers differ more), written by the
    project's exporter."""
    import torch
    from peft import LoraConfig, get_peft_model

    from datacreek_assets.finetune.base_model import base_model_dir, load_base
    from datacreek_assets.finetune.gguf_export import export_lora
    from datacreek_assets.finetune.pipeline import base_gguf

    base_dir = base_model_dir(base_name, cache)
    base = base_gguf(base_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(adapters):
        model, tokenizer = load_base(base_dir)
        torch.manual_seed(seed + i)
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, std)
        paths.append(Path(export_lora(peft_model, tokenizer, out / f"adapter-{i}.gguf").path))
    return base, paths
