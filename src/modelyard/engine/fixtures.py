"""Real, tiny test checkpoints built locally: nothing is downloaded.

Tests, benches and the demo need a causal LM that ``transformers`` loads, a tokenizer, and several
PEFT LoRA adapters that visibly change the output. This module makes them: a llama-architecture
model with random weights, a byte-level BPE tokenizer trained here with ``tokenizers`` (with a chat
template), and adapters each trained a few steps on its own text so their greedy outputs differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Modelyard serves many adapters from one base model.",
    "A model registry keeps track of checkpoints and their fine-tuned adapters.",
    "Low rank adaptation adds small trainable matrices to frozen weights.",
    "Pirates sail the seven seas looking for gold and treasure.",
    "The chef cooks pasta with tomatoes, garlic and fresh basil.",
    "Stars and planets drift through the silent dark of space.",
    "user: hello there! assistant: hi, how can I help you today?",
    "Numbers: one two three four five six seven eight nine ten.",
]

ADAPTER_TEXTS = {
    "pirate": "arr matey the treasure gold is buried on the island arr arr matey gold treasure",
    "chef": "add garlic basil tomatoes pasta and cook the pasta with garlic basil tomatoes",
    "space": "stars planets galaxy orbit the stars and planets orbit the galaxy stars planets",
    "numbers": "one two three four five six seven eight nine ten one two three four five",
}

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass(frozen=True)
class TinyModelShape:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2  # head_dim 32: the smallest head size vLLM's CPU attention supports
    num_key_value_heads: int = 1
    vocab_size: int = 384
    max_position_embeddings: int = 512


def build_tokenizer(out_dir: Path, vocab_size: int) -> None:
    """Train a byte-level BPE tokenizer on :data:`CORPUS` and save it in Hugging Face layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = CORPUS + list(ADAPTER_TEXTS.values())
    tokenizer.train_from_iterator(texts * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)


def build_base_model(out_dir: Path, shape: TinyModelShape = TinyModelShape(), seed: int = 0) -> Path:
    """A llama-architecture checkpoint with random weights, saved as safetensors with its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out_dir, shape.vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build_adapter(
    base_dir: Path,
    out_dir: Path,
    text: str,
    *,
    rank: int = 8,
    alpha: int = 16,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    steps: int = 80,
    seed: int = 0,
) -> Path:
    """Train a PEFT LoRA adapter a few steps on ``text`` and save it (adapter_config.json + safetensors)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0)
    )
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
    peft_model.train()
    for _ in range(steps):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def build_fixture_set(root: Path, *, adapters: tuple[str, ...] = ("pirate", "chef", "space"), rank: int = 8) -> dict[str, Path]:
    """The base model under ``root/base`` and one adapter per name under ``root/<name>``.

    Reuses what an earlier call already built in ``root`` (a marker file records completion).
    """
    root = Path(root)
    marker = root / "fixtures.json"
    wanted = {"adapters": list(adapters), "rank": rank}
    paths = {"base": root / "base", **{name: root / name for name in adapters}}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return paths
    build_base_model(paths["base"])
    for i, name in enumerate(adapters):
        build_adapter(paths["base"], paths[name], ADAPTER_TEXTS[name], rank=rank, seed=i)
    marker.write_text(json.dumps(wanted))
    return paths
