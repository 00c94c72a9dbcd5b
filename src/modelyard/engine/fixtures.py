"""Real, tiny test checkpoints built locally: nothing is downloaded.

Tests, benches and the demo need a causal LM that ``transformers`` loads, a tokenizer, and several
PEFT LoRA adapters that visibly change the output. This module makes them: a llama-architecture
model with random weights, a byte-level BPE tokenizer trained here with ``tokenizers`` (with a chat
template), and adapters each trained a few steps on its own text so their greedy outputs differ.

``arch=`` builds the architectures users bring instead (see :data:`ARCHITECTURES`): Llama 3, Qwen 2.5,
Gemma 3 (text) and Mistral, each a real ``transformers`` config class at tiny size, with the special
tokens, chat template and ``generation_config.json`` of its family: the chat turn ends with a token
that is listed in ``generation_config.json``'s ``eos_token_id`` but is not the tokenizer's
``eos_token`` (except Mistral, whose turns end with ``</s>``), and Gemma 3 and Mistral use a
sliding window of 16 positions. Their fixture sets add a ``chat`` adapter trained on one chat
exchange, so its greedy answer ends with the end-of-turn token.
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


CHAT_EXAMPLE = [
    {"role": "user", "content": "hello there!"},
    {"role": "assistant", "content": "hi, how can I help you today?"},
]


@dataclass(frozen=True)
class Architecture:
    """A model family's tokens and defaults, as its real checkpoints ship them."""

    name: str
    special_tokens: tuple[str, ...]  # get ids 0, 1, 2, ... in this order
    bos: str | None
    eos: str  # the tokenizer's eos_token
    pad: str | None
    end_of_turn: str  # what the chat template closes a turn with
    stop_tokens: tuple[str, ...]  # generation_config.json eos_token_id, in this order
    sampling: dict[str, float | int | bool]  # generation_config.json sampling defaults
    chat_template: str


ARCHITECTURES: dict[str, Architecture] = {
    # Llama 3.1 Instruct: turns end with <|eot_id|>; the base tokenizer's eos is <|end_of_text|>
    "llama3": Architecture(
        name="llama3",
        special_tokens=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eom_id|>", "<|eot_id|>"),
        bos="<|begin_of_text|>", eos="<|end_of_text|>", pad=None, end_of_turn="<|eot_id|>",
        stop_tokens=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        sampling={"do_sample": True, "temperature": 0.6, "top_p": 0.9},
        chat_template=(
            "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>"
            "\n\n{{ message['content'] }}<|eot_id|>{% endfor %}"
            "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
        ),
    ),
    # Qwen 2.5: ChatML turns end with <|im_end|>; the base tokenizer's eos is <|endoftext|>
    "qwen2": Architecture(
        name="qwen2",
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None, eos="<|endoftext|>", pad="<|endoftext|>", end_of_turn="<|im_end|>",
        stop_tokens=("<|im_end|>", "<|endoftext|>"),
        sampling={"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05},
        chat_template=(
            "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        ),
    ),
    # Gemma 3: turns end with <end_of_turn> (id 106 in the real vocabulary); eos is <eos>
    "gemma3": Architecture(
        name="gemma3",
        special_tokens=("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
        bos="<bos>", eos="<eos>", pad="<pad>", end_of_turn="<end_of_turn>",
        stop_tokens=("<eos>", "<end_of_turn>"),
        sampling={"do_sample": True, "top_k": 64, "top_p": 0.95},
        chat_template=(
            "{{ bos_token }}{% for message in messages %}<start_of_turn>"
            "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
            "{{ message['content'] }}<end_of_turn>\n{% endfor %}"
            "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
        ),
    ),
    # Mistral Instruct: [INST] ... [/INST] answer</s>; generation_config lists only </s>
    "mistral": Architecture(
        name="mistral",
        special_tokens=("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
        bos="<s>", eos="</s>", pad=None, end_of_turn="</s>",
        stop_tokens=("</s>",),
        sampling={},
        chat_template=(
            "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
            "[INST] {{ message['content'] }} [/INST]{% else %}{{ message['content'] }}</s>{% endif %}{% endfor %}"
        ),
    ),
}

SLIDING_WINDOW = 16  # Gemma 3's and Mistral's fixtures: prompts of a few dozen tokens run past it


def build_tokenizer(out_dir: Path, vocab_size: int, arch: Architecture | None = None) -> None:
    """Train a byte-level BPE tokenizer on :data:`CORPUS` and save it in Hugging Face layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if arch is None:
        special, names, template = ["<pad>", "<s>", "</s>"], {"bos_token": "<s>", "eos_token": "</s>",
                                                            "pad_token": "<pad>"}, CHAT_TEMPLATE
    else:
        special, template = list(arch.special_tokens), arch.chat_template
        names = {"bos_token": arch.bos, "eos_token": arch.eos, "pad_token": arch.pad}
        names = {k: v for k, v in names.items() if v is not None}
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = CORPUS + list(ADAPTER_TEXTS.values())
    tokenizer.train_from_iterator(texts * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **names)
    fast.chat_template = template
    fast.save_pretrained(out_dir)


def build_base_model(
    out_dir: Path, shape: TinyModelShape = TinyModelShape(), seed: int = 0, *, arch: str = "llama"
) -> Path:
    """A checkpoint with random weights, saved as safetensors with its tokenizer.

    ``arch="llama"`` (the default) is the original fixture; the others are listed in :data:`ARCHITECTURES`.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if arch != "llama":
        return _build_arch_model(out_dir, ARCHITECTURES[arch], shape, seed)
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


def _arch_config(arch: Architecture, shape: TinyModelShape, ids: dict[str, int | None]):
    """The family's real config class at tiny size (head size 32)."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    common = {
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "max_position_embeddings": shape.max_position_embeddings,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
    }
    head_dim = shape.hidden_size // shape.num_attention_heads
    if arch.name == "llama3":  # Llama 3.1's rope scaling (frequencies below the original context are stretched)
        return LlamaConfig(**common, tie_word_embeddings=False, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 128,
        })
    if arch.name == "qwen2":  # biases on q/k/v, tied embeddings (as the small Qwen 2.5 models)
        return Qwen2Config(**common, tie_word_embeddings=True, rope_parameters={
            "rope_type": "default", "rope_theta": 1_000_000.0}, use_sliding_window=False)
    if arch.name == "gemma3":
        # Sliding and full layers alternate; each kind has its own rope base (rope_local_base_freq for
        # the sliding ones); scores are scaled by query_pre_attn_scalar; embeddings tied and scaled.
        layers = max(shape.num_hidden_layers, 4)
        return Gemma3TextConfig(
            **{**common, "num_hidden_layers": layers}, head_dim=head_dim, query_pre_attn_scalar=head_dim,
            sliding_window=SLIDING_WINDOW, tie_word_embeddings=True,
            layer_types=["full_attention" if (i + 1) % 2 == 0 else "sliding_attention" for i in range(layers)],
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            },
        )
    if arch.name == "mistral":  # every layer slides
        return MistralConfig(**common, head_dim=head_dim, sliding_window=SLIDING_WINDOW, tie_word_embeddings=False)
    raise ValueError(f"unknown fixture architecture {arch.name!r}")


def _build_arch_model(out_dir: Path, arch: Architecture, shape: TinyModelShape, seed: int) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    build_tokenizer(out_dir, shape.vocab_size, arch)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    token_id = tokenizer.convert_tokens_to_ids
    ids = {name: token_id(getattr(arch, name)) if getattr(arch, name) else None for name in ("bos", "eos", "pad")}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_arch_config(arch, shape, ids))
    stops = [token_id(t) for t in arch.stop_tokens]
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], pad_token_id=ids["pad"],
        eos_token_id=stops if len(stops) > 1 else stops[0], **arch.sampling,
    )
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
    lr: float = 2e-2,
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
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    peft_model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is ~10x faster on a busy machine
    try:
        for _ in range(steps):
            loss = peft_model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def chat_prompt(tokenizer, messages: list[dict[str, str]] | None = None) -> str:
    """The chat template applied to ``messages`` (the user turn of :data:`CHAT_EXAMPLE` by default),
    ready for the assistant's answer."""
    messages = messages if messages is not None else CHAT_EXAMPLE[:1]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def build_fixture_set(
    root: Path, *, adapters: tuple[str, ...] | None = None, rank: int = 8, arch: str = "llama"
) -> dict[str, Path]:
    """The base model under ``root/base`` and one adapter per name under ``root/<name>``.

    ``arch`` picks the architecture (``llama``, the default, or a key of :data:`ARCHITECTURES`). The
    default adapters are pirate, chef and space for llama; pirate, chef and chat for the others, where
    ``chat`` is trained on :data:`CHAT_EXAMPLE` through the chat template, so its answer to the user turn
    ends with the architecture's end-of-turn token. Reuses what an earlier call already built in
    ``root`` (a marker file records completion).
    """
    if adapters is None:
        adapters = ("pirate", "chef", "space") if arch == "llama" else ("pirate", "chef", "chat")
    root = Path(root)
    marker = root / "fixtures.json"
    wanted: dict[str, object] = {"adapters": list(adapters), "rank": rank}
    if arch != "llama":
        wanted["arch"] = arch
    paths = {"base": root / "base", **{name: root / name for name in adapters}}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return paths
    build_base_model(paths["base"], arch=arch)
    for i, name in enumerate(adapters):
        if name == "chat":
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(paths["base"])
            text = tokenizer.apply_chat_template(CHAT_EXAMPLE, tokenize=False)
            build_adapter(paths["base"], paths[name], text, rank=rank, seed=i, steps=120, lr=1e-2)
        else:
            build_adapter(paths["base"], paths[name], ADAPTER_TEXTS[name], rank=rank, seed=i)
    marker.write_text(json.dumps(wanted))
    return paths


# ----- real model shapes (benches): a model's exact config, random weights -------------------------

REAL_SHAPES: dict[str, dict[str, object]] = {
    # google/gemma-3-270m: 18 layers, 5 sliding (512) to 1 full, head_dim 256, a 262k vocabulary (tied)
    "gemma-3-270m": {
        "arch": "gemma3", "vocab_size": 262_144, "hidden_size": 640, "intermediate_size": 2048,
        "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
        "max_position_embeddings": 32_768, "sliding_window": 512, "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
        "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)],
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
    },
    # Qwen/Qwen2.5-0.5B: 24 layers, 14 heads / 2 kv heads of 64, biases on q/k/v, tied embeddings
    "qwen2.5-0.5b": {
        "arch": "qwen2", "vocab_size": 151_936, "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "max_position_embeddings": 32_768, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
        "use_sliding_window": False, "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    },
    # meta-llama/Llama-3.2-1B: 16 layers, 32 heads / 8 kv heads of 64, llama3 rope scaling, tied embeddings
    "llama-3.2-1b": {
        "arch": "llama3", "vocab_size": 128_256, "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "max_position_embeddings": 131_072, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 32.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    },
}


def build_shape_tokenizer(out_dir: Path, vocab_size: int, arch: Architecture) -> None:
    """A byte-level tokenizer with exactly ``vocab_size`` ids, made here: the family's special tokens,
    the 256 byte symbols, and filler tokens (strings of letters) up to the size. No merges are
    needed: bench prompts are token ids, and every id decodes to some text."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in [*arch.special_tokens, *sorted(pre_tokenizers.ByteLevel.alphabet())]:
        vocab.setdefault(token, len(vocab))
    letters = string.ascii_lowercase
    n = 0
    while len(vocab) < vocab_size:
        word, k = "", n
        while True:
            word, k = letters[k % 26] + word, k // 26
            if not k:
                break
        vocab.setdefault("Ġ" + word, len(vocab))
        n += 1
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    names = {"bos_token": arch.bos, "eos_token": arch.eos, "pad_token": arch.pad}
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **{k: v for k, v in names.items() if v})
    fast.add_special_tokens({"additional_special_tokens": list(arch.special_tokens)})
    fast.chat_template = arch.chat_template
    fast.save_pretrained(out_dir)


def build_shape_model(out_dir: Path, shape: str, seed: int = 0) -> Path:
    """A checkpoint with the exact config of the real model ``shape`` (a key of :data:`REAL_SHAPES`)
    and random weights (throughput does not depend on their values), with a tokenizer made here.
    Reuses a complete earlier build in ``out_dir``."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Gemma3TextConfig,
        GenerationConfig,
        LlamaConfig,
        Qwen2Config,
    )

    out_dir = Path(out_dir)
    marker = out_dir / "shape.json"
    if marker.exists() and json.loads(marker.read_text()) == {"shape": shape, "seed": seed}:
        return out_dir
    spec = dict(REAL_SHAPES[shape])
    arch = ARCHITECTURES[str(spec.pop("arch"))]
    out_dir.mkdir(parents=True, exist_ok=True)
    build_shape_tokenizer(out_dir, int(spec["vocab_size"]), arch)
    token_id = AutoTokenizer.from_pretrained(out_dir).convert_tokens_to_ids
    ids = {f"{name}_token_id": token_id(getattr(arch, name)) if getattr(arch, name) else None
           for name in ("bos", "eos", "pad")}
    cls = {"gemma3": Gemma3TextConfig, "qwen2": Qwen2Config, "llama3": LlamaConfig}[arch.name]
    config = cls(**spec, **ids)
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():  # small random weights: finite activations everywhere
            if param.ndim > 1:
                param.normal_(0.0, 0.02)
            else:  # norms scale by 1 (Gemma's by 1 + w), biases 0
                param.fill_(0.0 if name.endswith("bias") or arch.name == "gemma3" else 1.0)
    stops = [token_id(t) for t in arch.stop_tokens]
    model.generation_config = GenerationConfig(bos_token_id=ids["bos_token_id"], pad_token_id=ids["pad_token_id"],
                                               eos_token_id=stops if len(stops) > 1 else stops[0], **arch.sampling)
    model.save_pretrained(out_dir, safe_serialization=True)
    marker.write_text(json.dumps({"shape": shape, "seed": seed}))
    return out_dir


def build_random_adapters(base_dir: Path, out_dirs: list[Path], *, rank: int = 8,
                          targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")) -> list[Path]:
    """PEFT LoRA adapters with random (non-zero) A and B on ``targets``, one per directory, from one
    load of the base model (benches: their values do not matter, only their shapes)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    todo = [Path(d) for d in out_dirs if not (Path(d) / "adapter_model.safetensors").exists()]
    if todo:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets),
                                                      lora_dropout=0.0, init_lora_weights=False))
        lora = [p for n, p in peft_model.named_parameters() if "lora_" in n]
        for i, out_dir in enumerate(todo):
            torch.manual_seed(1000 + i)
            with torch.no_grad():
                for p in lora:
                    p.normal_(0.0, 0.02)
            peft_model.save_pretrained(out_dir, safe_serialization=True)
    return [Path(d) for d in out_dirs]
