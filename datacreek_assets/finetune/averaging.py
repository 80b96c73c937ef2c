"""The mean of several trainings' LoRA updates, as one adapter.

Trainings that differ only in their seed land on different adapters, and their answers differ
question by question (on the demo tenant, 44 of 109 hand-written questions were right for some
seeds and wrong for others). The mean of their weight updates answers better than any of them
(README, "Seeds, more member records, a retry rule and averaged adapters").

Member i's update is ``s_i · B_i · A_i`` (``s_i`` = lora_alpha / r). Their mean is exactly one LoRA
of rank ``Σ r_i``: the ``A_i`` stacked, each scaled by ``s_i / n``, and the ``B_i`` side by side with
scaling 1. That is peft's "cat" combination, so the averaged adapter is a plain peft adapter that
the exporter, llama.cpp and the adapter pool load as any other (rank 24 for three rank-8 members).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from datacreek_assets.finetune.base_model import load_base
from datacreek_assets.finetune.packing import rows_for
from datacreek_assets.finetune.training import token_loss_sum, validation_loss

AVERAGED = "averaged"


@dataclass
class AveragedAdapter:
    adapter_dir: str
    rank: int
    val_loss: float | None  # the averaged adapter's, on the validation rows
    member_val_losses: list[float | None]  # each member's, measured the same way (fp32 base, on CPU)


def average_adapters(base_dir: Path, member_dirs: list[Path], out: Path, val_chats: list[dict],
                     max_len: int) -> AveragedAdapter:
    """Write the members' mean update to ``out`` (a peft adapter folder, with the base's tokenizer),
    replacing what is there only once the new folder is complete. The members and the average are
    scored with the same validation loss on ``val_chats`` (packed to ``max_len``, as trained): an
    fp32 base on CPU, whatever the members trained in."""
    import torch
    from peft import PeftModel

    if len(member_dirs) < 2:
        raise ValueError(f"averaging needs at least two adapters, not {len(member_dirs)}")
    model, tokenizer = load_base(base_dir)
    val_rows, _ = rows_for(tokenizer, val_chats, max_len)
    names = [f"member{i}" for i in range(len(member_dirs))]
    peft_model = PeftModel.from_pretrained(model, str(member_dirs[0]), adapter_name=names[0])
    for name, folder in zip(names[1:], member_dirs[1:]):
        peft_model.load_adapter(str(folder), adapter_name=name)
    peft_model.add_weighted_adapter(names, [1 / len(names)] * len(names), AVERAGED, combination_type="cat")
    peft_model.eval()

    def scored(name: str) -> float | None:
        if not val_rows:
            return None
        peft_model.set_adapter(name)
        with torch.inference_mode():
            return validation_loss(lambda batch: token_loss_sum(peft_model, batch), val_rows, 1,
                                   tokenizer.pad_token_id, "cpu")

    member_losses = [scored(name) for name in names]
    averaged_loss = scored(AVERAGED)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    peft_model.save_pretrained(str(staging), selected_adapters=[AVERAGED])  # a named adapter saves into its subfolder
    tokenizer.save_pretrained(staging / AVERAGED)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging / AVERAGED, out)
    shutil.rmtree(staging, ignore_errors=True)
    rank = peft_model.peft_config[AVERAGED].r
    return AveragedAdapter(str(out), rank, averaged_loss, member_losses)
