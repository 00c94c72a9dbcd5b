"""Prefix caching on the static-cache path: a prompt that starts like an earlier one (a chat
template's system prompt, a few-shot preamble) reuses the keys and values computed for it.

The cache holds blocks of ``block`` prompt positions: every layer's keys and values there. A block is
found by a chain key, a hash of the previous block's key, its own tokens and ``seed``, which names
the weights that made its keys and values (the base model, or one loaded copy of an adapter: LoRA on
k/v changes them, and a replaced adapter's new copy gets a new seed). A hit compares the block's
tokens and its parent's key too, so a hash collision cannot hand a row another prompt's keys.
Blocks are kept within ``budget`` bytes, the least recently used dropped first.

A prompt never reuses its last position: at least one token is prefilled, which gives the logits for
its first output token. The engine asks :meth:`match` when a row joins and :meth:`store` when its
prompt has been read; the row's keys and values for the positions it prefilled are captured by
:class:`~modelyard.engine.core.StaticKV` during its prefill passes (a ring of a sliding layer no longer
holds them all by then).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, [kv heads, positions, head dim]


@dataclass
class Block:
    parent: bytes
    tokens: tuple[int, ...]
    kv: KV
    bytes: int


class PrefixCache:
    def __init__(self, budget: int, block: int = 32) -> None:
        self.budget = max(0, int(budget))
        self.block = block
        self.blocks: OrderedDict[bytes, Block] = OrderedDict()
        self.bytes = 0
        self.queried = 0  # prompt tokens looked up (vLLM's prefix_cache_queries)
        self.hits = 0  # of them, tokens whose keys and values were reused (prefix_cache_hits)

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def _chain(self, seed: str, tokens: list[int], blocks: int) -> list[tuple[bytes, bytes, tuple[int, ...]]]:
        """(parent key, key, tokens) of the first ``blocks`` blocks of ``tokens``."""
        out, parent = [], hashlib.blake2b(seed.encode(), digest_size=16).digest()
        for i in range(blocks):
            chunk = tuple(tokens[i * self.block:(i + 1) * self.block])
            key = hashlib.blake2b(parent + array("q", chunk).tobytes(), digest_size=16).digest()
            out.append((parent, key, chunk))
            parent = key
        return out

    def match(self, seed: str, tokens: list[int]) -> list[KV]:
        """The cached blocks that start ``tokens`` (in order), leaving at least its last token out."""
        if not self.enabled:
            return []
        self.queried += len(tokens)
        found = []
        for parent, key, chunk in self._chain(seed, tokens, (len(tokens) - 1) // self.block):
            block = self.blocks.get(key)
            if block is None or block.parent != parent or block.tokens != chunk:
                break
            self.blocks.move_to_end(key)
            found.append(block.kv)
        self.hits += len(found) * self.block
        return found

    def store(self, seed: str, tokens: list[int], start: int, captured: KV) -> None:
        """Keep the blocks of ``tokens`` from position ``start`` (a block boundary) whose keys and values
        ``captured`` holds (positions ``start ..``), within the budget."""
        if not self.enabled:
            return
        chain = self._chain(seed, tokens, len(tokens) // self.block)
        for index in range(start // self.block, len(chain)):
            parent, key, chunk = chain[index]
            if key in self.blocks:
                self.blocks.move_to_end(key)
                continue
            low, high = index * self.block - start, (index + 1) * self.block - start
            kv = [(k[:, low:high].clone(), v[:, low:high].clone()) for k, v in captured]
            size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
            if size > self.budget:
                return
            while self.bytes + size > self.budget:
                _, dropped = self.blocks.popitem(last=False)
                self.bytes -= dropped.bytes
            self.blocks[key] = Block(parent, chunk, kv, size)
            self.bytes += size

    def clear(self) -> None:
        self.blocks.clear()
        self.bytes = 0
