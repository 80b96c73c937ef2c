"""The project's GGUF exporter for Llama-architecture models (written with the `gguf` package).

Writes a full model (f32, f16 or q8_0) or a LoRA adapter on its own. llama.cpp
expects the rows of the query and key projections in its own rotary layout, so
they (and, for an adapter, the LoRA B matrices that produce them) are permuted
exactly as llama.cpp's converter does. The tokenizer goes in as a byte-level BPE
(`tokenizer.ggml.model = "gpt2"`): vocabulary by id, merges, token types and
special ids, plus the chat template.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}
_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


class ExportError(ValueError):
    pass


@dataclass
class ExportedFile:
    path: str
    kind: str  # f32 | f16 | q8_0 | lora
    bytes: int
    tensors: int


def gguf_name(hf_name: str) -> str:
    """HF Llama parameter name -> GGUF tensor name."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    parts = hf_name.split(".")
    if parts[:2] != ["model", "layers"] or parts[-1] != "weight":
        raise ExportError(f"unexpected tensor {hf_name!r} for a Llama model")
    module = ".".join(parts[3:-1])
    if module not in _LAYER_NAMES:
        raise ExportError(f"unexpected tensor {hf_name!r} for a Llama model")
    return f"blk.{parts[2]}.{_LAYER_NAMES[module]}.weight"


def permute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF rotary layout (halves) -> llama.cpp layout (interleaved pairs), per head, over rows."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _rotary_heads(gguf_tensor: str, config) -> int | None:
    if ".attn_q." in gguf_tensor:
        return config.num_attention_heads
    if ".attn_k." in gguf_tensor:
        return config.num_key_value_heads
    return None


def _writer(path: Path, config, tokenizer, name: str, file_type: int | None):
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    head_dim = config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    if file_type is not None:
        writer.add_file_type(file_type)
    _add_tokenizer(writer, tokenizer, config.vocab_size)
    return writer


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise ExportError(f"only byte-level BPE tokenizers are exported, not {spec['model']['type']}")
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    for i in range(len(tokens), vocab_size):  # embedding rows beyond the tokenizer: unused
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for setter, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                             (writer.add_eos_token_id, tokenizer.eos_token_id),
                             (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            setter(token_id)
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _encode(array: np.ndarray, kind: str):
    """(data, raw_dtype) for one tensor; vectors (norms) always stay f32."""
    import gguf

    if array.ndim == 1 or kind == "f32":
        return array.astype(np.float32), None
    if kind == "f16":
        return array.astype(np.float16), None
    if kind == "q8_0":
        if array.shape[-1] % 32:
            return array.astype(np.float16), None  # Q8_0 blocks are 32 wide
        return gguf.quants.quantize(array.astype(np.float32), gguf.GGMLQuantizationType.Q8_0), \
            gguf.GGMLQuantizationType.Q8_0
    raise ExportError(f"unknown GGUF kind {kind!r}; use one of {sorted(FILE_TYPES)}")


def export_model(model, tokenizer, path: Path, kind: str = "f16", name: str = "datacreek") -> ExportedFile:
    """Write a (merged) Llama model as GGUF; written to a temporary name and renamed."""
    if kind not in FILE_TYPES:
        raise ExportError(f"unknown GGUF kind {kind!r}; use one of {sorted(FILE_TYPES)}")
    config = model.config
    if config.model_type != "llama":
        raise ExportError(f"only Llama-architecture models are exported, not {config.model_type!r}")
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")  # writers never share a temporary file
    writer = _writer(tmp, config, tokenizer, name, FILE_TYPES[kind])
    count = 0
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd for the output when `output` is absent
        name_out = gguf_name(hf_name)
        array = tensor.detach().float().cpu().numpy()
        heads = _rotary_heads(name_out, config)
        if heads:
            array = permute_rows(array, heads)
        data, raw_dtype = _encode(array, kind)
        writer.add_tensor(name_out, data, raw_dtype=raw_dtype)
        count += 1
    _finish(writer)
    os.replace(tmp, path)
    return ExportedFile(str(path), kind, path.stat().st_size, count)


def export_lora(peft_model, tokenizer, path: Path, name: str = "datacreek-adapter") -> ExportedFile:
    """Write the LoRA matrices alone (f32) as a GGUF adapter llama.cpp applies to the base file."""
    import gguf

    config = peft_model.base_model.model.config
    lora = peft_model.peft_config["default"]
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lora.lora_alpha))
    count = 0
    for full_name, tensor in peft_model.state_dict().items():
        if ".lora_A." not in full_name and ".lora_B." not in full_name:
            continue
        which = "lora_a" if ".lora_A." in full_name else "lora_b"
        module = full_name.split(".lora_")[0].removeprefix("base_model.model.")
        name_out = gguf_name(module + ".weight") + "." + which
        array = tensor.detach().float().cpu().numpy()
        heads = _rotary_heads(name_out, config)
        if heads and which == "lora_b":  # B produces the rows that the base file stores permuted
            array = permute_rows(array, heads)
        writer.add_tensor(name_out, np.ascontiguousarray(array, dtype=np.float32))
        count += 1
    if not count:
        raise ExportError("the model has no LoRA matrices to export")
    _finish(writer)
    os.replace(tmp, path)
    return ExportedFile(str(path), "lora", path.stat().st_size, count)


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
