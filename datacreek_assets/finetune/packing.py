"""Chat records -> token rows for training: prompt tokens masked, examples packed.

Each example is tokenized as the chat template renders it; every token up to and
including the assistant header gets label -100, so the loss covers only the
answer. Examples are packed first-fit-decreasing into rows of at most
``max_len`` tokens. Inside a row, each example sees only itself: positions
restart at 0 and the attention mask is block-diagonal and causal, so a packed
row computes exactly what the examples would compute one by one, without the
padding they would need in a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass
class PackedRow:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    segments: list[int]  # 1, 2, ... per example

    @property
    def label_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def encode(tokenizer, messages: list[dict], max_len: int) -> Example | None:
    """Prompt-masked token ids of one chat, or None when it does not fit ``max_len``."""
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("chat template does not render the prompt as a prefix of the full chat")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    ids = prompt_ids + answer_ids
    if len(ids) > max_len or not answer_ids:
        return None
    return Example(ids, [IGNORE] * len(prompt_ids) + answer_ids)


def pack(examples: list[Example], max_len: int) -> list[PackedRow]:
    """First-fit-decreasing bin packing (deterministic: ties keep input order)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    rows: list[PackedRow] = []
    for i in order:
        example = examples[i]
        n = len(example.input_ids)
        row = next((r for r in rows if len(r.input_ids) + n <= max_len), None)
        if row is None:
            row = PackedRow([], [], [], [])
            rows.append(row)
        segment = (row.segments[-1] if row.segments else 0) + 1
        row.input_ids += example.input_ids
        # The first token of an example predicts nothing from the previous example.
        row.labels += [IGNORE] + example.labels[1:]
        row.position_ids += list(range(n))
        row.segments += [segment] * n
    return rows


def rows_for(tokenizer, chats: list[dict], max_len: int) -> tuple[list[PackedRow], int]:
    """Chat records (``messages``) packed into rows, and how many were dropped for exceeding ``max_len``."""
    examples = [e for e in (encode(tokenizer, c["messages"], max_len) for c in chats) if e is not None]
    return pack(examples, max_len), len(chats) - len(examples)


def collate(rows: list[PackedRow], pad_id: int, dtype=None, device=None) -> dict:
    """Tensors for one micro-batch on ``device``: right-padded to the longest row, 4-D block-causal mask.

    The mask (rows x width x width) is built where it is used: on a GPU, building it on the host
    and copying it over took longer than the step's compute at large micro-batches."""
    import torch

    dtype = dtype or torch.float32
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row.input_ids)
        ids[b, :n] = torch.tensor(row.input_ids)
        labels[b, :n] = torch.tensor(row.labels)
        positions[b, :n] = torch.tensor(row.position_ids)
        segments[b, :n] = torch.tensor(row.segments)
    ids, labels, positions, segments = (t.to(device) for t in (ids, labels, positions, segments))
    same = segments[:, :, None] == segments[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    allowed = same & causal[None] & (segments[:, :, None] > 0)
    allowed |= torch.eye(width, dtype=torch.bool, device=segments.device)[None]  # padding attends to itself: no NaN
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(~allowed, torch.finfo(dtype).min)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": mask[:, None]}
