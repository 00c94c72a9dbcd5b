"""The scheduler: continuous batching of requests for many adapters over one base model.

One thread owns the model. Each loop turn it admits waiting requests, reads up to ``prefill_chunk``
of their prompt tokens in one packed pass, and runs one decode step for every running row at once;
requests join and leave between steps, and each row carries its own position ids, so a row's numbers
do not depend on its neighbours. Rows of one step may use different adapters: see
:mod:`modelyard.engine.lora`. Models with the attention hooks run on a preallocated cache
(:class:`StaticKV`, "the static-cache path" below); others on the generic path, where each prompt is
prefilled alone and merged into a left-padded batch cache with an attention mask. On the static path
a joining row first takes the keys and values of its prompt's longest cached prefix
(:mod:`modelyard.engine.prefix`), and rows that are all greedy get their tokens from the output
head's greedy mode (:class:`~modelyard.engine.kernels.GreedyHead`) instead of logits.

Caches are built from the model's config, so a sliding-window layer (Gemma 3, Mistral) keeps only
its window (a ring in :class:`StaticKV`; on the generic path the last ``sliding_window - 1`` columns,
as ``transformers`` keeps them, and the cache surgery that merges and drops rows keeps each layer's
kind, see :meth:`Engine._merge`). A request stops on any eos id of the checkpoint's
``generation_config.json``, its config and its tokenizer.

Adapter tiers, as in vLLM: ``max_loras`` adapters are resident in the batched weights; up to
``max_cpu_loras`` more are kept parsed in memory (least recently used out); any other loaded
adapter is read again from its path when a request needs it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    AttentionInterface,
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    GenerationConfig,
)
from transformers.cache_utils import get_layer_types_and_kwargs
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from modelyard.engine.kernels import (
    GreedyHead,
    first_argmax,
    intra_op_threads,
    prepack_linears,
)
from modelyard.engine.lora import AdapterError, LoraBank, LoraWeights, base_layer_shapes, read_adapter
from modelyard.engine.prefix import PrefixCache

log = logging.getLogger("modelyard.engine")


class UnknownAdapter(KeyError):
    pass


@dataclass
class SamplingParams:
    """What a request asks of the sampler; every field is honoured (the server refuses what is not).

    Penalties follow the OpenAI/vLLM definitions: ``presence_penalty`` and ``frequency_penalty``
    subtract from the logits of tokens already generated (once, and per occurrence);
    ``repetition_penalty`` divides positive (multiplies negative) logits of tokens seen in the
    prompt or the output; ``logit_bias`` adds to chosen token ids. They apply to greedy decoding too.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no limit
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that reshapes the logits: the argmax is the token."""
        return self.temperature <= 0 and not self.shapes_logits

    @property
    def shapes_logits(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.logit_bias)


@dataclass
class Generation:
    """One request's life in the engine. ``emit`` receives ("text", delta) and ("done", reason)."""

    prompt_ids: list[int]
    adapter: str | None
    params: SamplingParams
    emit: Callable[[tuple[str, Any]], None]
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of ``text`` already emitted
    finish_reason: str | None = None
    slot: int = 0
    position: int = 0
    row: int = 0  # the static cache's row (static path)
    prefilled: int = 0  # prompt tokens already in the cache (static path: prefill runs in chunks)
    cached: int = 0  # of them, tokens whose keys and values came from the prefix cache
    capture: list[list[tuple[torch.Tensor, torch.Tensor]]] | None = None  # per layer: this row's prefilled K/V
    generator: torch.Generator | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.output_ids)


class Engine:
    def __init__(
        self,
        model_path: str | Path,
        *,
        max_loras: int = 4,
        max_cpu_loras: int | None = None,
        max_lora_rank: int = 16,
        max_batch: int = 32,
        served_name: str | None = None,
        dtype: str | torch.dtype = "float32",
        kv_cache_bytes: int | None = None,
        prefill_chunk: int = 512,
        greedy_head: bool | None = None,
        prefix_cache_bytes: int | None = None,
    ) -> None:
        self.model_path = str(model_path)
        self.served_name = served_name or self.model_path
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.max_loras = max_loras
        self.max_cpu_loras = max(max_cpu_loras if max_cpu_loras is not None else max_loras, max_loras)
        self.max_lora_rank = max_lora_rank
        self.max_batch = max_batch
        self.prefill_chunk = max(1, int(prefill_chunk))  # prompt tokens per prefill pass (static path)
        self.kv_cache_bytes = int(kv_cache_bytes) if kv_cache_bytes else _default_kv_bytes()

        self.adapters: dict[str, str] = {}  # loaded adapters: name -> path
        self.cpu_cache: OrderedDict[str, LoraWeights] = OrderedDict()
        self.resident: OrderedDict[str, int] = OrderedDict()  # name -> slot, LRU first
        self.slot_loads = 0  # adapters written into a slot of the batched weights (counted for /metrics)
        self.evictions = 0  # of them, those that pushed out the least recently used resident adapter
        self.rows_per_slot: dict[int, int] = {}
        self.retired: set[str] = set()  # unloaded names whose slots the engine thread must retire

        self.pending: deque[Generation] = deque()
        self.running: list[Generation] = []
        self.prefilling: list[Generation] = []  # static path: rows whose prompts are still being read
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None
        self.cond = threading.Condition()
        self.stopped = False
        self.steps = 0
        # The engine thread builds the model, then serves: see _run.
        built: list[BaseException | None] = []
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(greedy_head, prefix_cache_bytes, built, ready),
                                       name="engine", daemon=True)
        self.thread.start()
        ready.wait()
        if built[0] is not None:
            self.thread.join()
            raise built[0]

    def _build(self, greedy_head: bool | None, prefix_cache_bytes: int | None) -> None:
        """Load the model and make it fast (engine thread, before the loop)."""
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype).eval()
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])  # logits per position
        generation_config = _generation_config(self.model_path)
        self.eos_token_ids: set[int] = _eos_token_ids(generation_config, self.model.config, self.tokenizer)
        self.generation_defaults: dict[str, float | int] = _sampling_defaults(generation_config)
        self.windows = _cache_windows(self.model.config)  # per layer: sliding window, or None (full)
        self.layer_shapes = base_layer_shapes(self.model)
        self.bank = LoraBank(self.model, slots=self.max_loras, max_rank=self.max_lora_rank)
        head = self.model.get_output_embeddings()
        if greedy_head is None:  # worth its half-width copy where the head is a large read: real vocabularies
            greedy_head = self.dtype == torch.float32 and head.weight.numel() >= _GREEDY_HEAD_WEIGHTS
        prepack_linears(self.model, greedy_head=greedy_head)
        head = self.model.get_output_embeddings()
        self.greedy_head = head if isinstance(head, GreedyHead) else None
        # Every pass runs on all intra-op threads. With this thread the only one that starts OpenMP
        # work (see _run), a worker spins between parallel regions and joins each one at once; running
        # the small operations of a decode step on one thread and only the large matmuls on all of them
        # (an earlier policy, which paid off while the workers slept) measured slower at every batch size.
        self.threads = torch.get_num_threads()
        self.kv = StaticKV(self.windows)
        self.fast = self._probe_static_path()
        if prefix_cache_bytes is None:
            prefix_cache_bytes = min(_PREFIX_CACHE_BYTES, self.kv_cache_bytes // 4)
        self.prefix = PrefixCache(prefix_cache_bytes if self.fast else 0)
        self.slot_seeds: dict[int, str] = {0: "base"}  # which weights a slot holds, for the prefix cache

    # ----- adapters (called from request threads) -------------------------------------------------

    def load_adapter(self, name: str, path: str) -> None:
        """Validate and register an adapter. Parsing happens outside the lock: a bad adapter never
        touches the running batch."""
        if name in self.adapters:
            raise AdapterError(f"The lora adapter '{name}' has already been loaded.")
        weights = self._read_adapter(name, path)
        with self.cond:
            if name in self.adapters:
                raise AdapterError(f"The lora adapter '{name}' has already been loaded.")
            self.adapters[name] = path
            self._cache_weights(weights)
        log.info("adapter loaded", extra={"adapter": name, "path": path, "rank": weights.rank})

    def replace_adapter(self, name: str, path: str) -> None:
        """Load new weights under a loaded adapter's name (vLLM's ``load_inplace``). Requests already
        running finish on the old weights; requests admitted afterwards get the new ones."""
        weights = self._read_adapter(name, path)
        with self.cond:
            if name not in self.adapters:
                raise UnknownAdapter(name)
            self.adapters[name] = path
            self.retired.add(name)  # the engine thread moves the old slot aside before admitting more work
            self._cache_weights(weights)
            self.cond.notify()
        log.info("adapter replaced", extra={"adapter": name, "path": path, "rank": weights.rank})

    def unload_adapter(self, name: str) -> None:
        """Forget an adapter. Its slot is retired by the engine thread once no running row uses it."""
        with self.cond:
            if name not in self.adapters:
                raise UnknownAdapter(name)
            del self.adapters[name]
            self.cpu_cache.pop(name, None)
            self.retired.add(name)
            self.cond.notify()
        log.info("adapter unloaded", extra={"adapter": name})

    def _read_adapter(self, name: str, path: str) -> LoraWeights:
        """Parse an adapter on the calling (request) thread, single-threaded: a thread other than the
        engine's must not start OpenMP workers of its own (see :meth:`_run`)."""
        with intra_op_threads(1):
            return read_adapter(name, path, max_rank=self.max_lora_rank, layer_shapes=self.layer_shapes)

    def _cache_weights(self, weights: LoraWeights) -> None:
        self.cpu_cache[weights.name] = weights
        self.cpu_cache.move_to_end(weights.name)
        while len(self.cpu_cache) > self.max_cpu_loras:
            self.cpu_cache.popitem(last=False)

    # ----- requests ----------------------------------------------------------------------------

    def submit(self, generation: Generation) -> None:
        with self.cond:
            if generation.adapter is not None and generation.adapter not in self.adapters:
                raise UnknownAdapter(generation.adapter)
            if generation.params.seed is not None:
                generation.generator = torch.Generator().manual_seed(generation.params.seed)
            self.pending.append(generation)
            self.cond.notify()

    def shutdown(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()
        self.thread.join(timeout=10)

    # ----- the loop (engine thread only) -----------------------------------------------------------

    def _run(self, greedy_head: bool | None, prefix_cache_bytes: int | None, built: list[BaseException | None],
             ready: threading.Event) -> None:
        """Build the model on this thread, then serve until shut down.

        Only this thread runs the model's multi-threaded work, loading included: with OpenMP (libgomp)
        every thread that starts a parallel region keeps workers of its own for good, and once a
        process holds more OpenMP threads than cores, idle workers stop spinning and sleep at once.
        Then each large matmul of a decode step waits for a sleeping worker to wake: on the 2-core
        bench machine (Gemma-3-270M shape, batch 8) throughput was 85-111 tok/s when the constructing
        thread had loaded the model, 119-140 with this thread alone starting OpenMP work."""
        try:
            self._build(greedy_head, prefix_cache_bytes)
        except BaseException as exc:  # noqa: BLE001 - raised again by __init__ on the caller's thread
            built.append(exc)
            ready.set()
            return
        built.append(None)
        ready.set()
        self._loop()

    def _loop(self) -> None:
        """Hold the lock only to take new work: forward passes run without it, so submitting a
        request never waits behind a step (Python locks are not fair, and a loop that re-takes the
        lock after every step would starve submitters)."""
        while True:
            with self.cond:
                while (not self.stopped and not self.pending and not self.running and not self.prefilling
                       and not self.retired):
                    self.cond.wait()
                if self.stopped:
                    return
                incoming = list(self.pending)
                self.pending.clear()
                retired, self.retired = self.retired, set()
            try:
                with torch.inference_mode():
                    self._retire(retired)
                    self._admit(incoming)
                    if self.prefilling:
                        self._prefill_packed()
                    if self.running:
                        self._decode_step() if not self.fast else self._decode_static()
            except Exception as exc:
                log.exception("engine step failed")
                for gen in {id(g): g for g in self.running + self.prefilling + incoming}.values():  # each once
                    if gen.finish_reason is None:
                        gen.emit(("error", f"engine error: {exc}"))
                self.running, self.prefilling, self.cache, self.mask = [], [], None, None
                self.rows_per_slot.clear()
                self.kv.packed = None

    def _retire(self, names: set[str]) -> None:
        """Unloaded adapters leave their slots; one still in use is renamed so no new request
        matches it, and is cleared when its last row finishes (see :meth:`_release`)."""
        for name in names:
            slot = self.resident.pop(name, None)
            if slot is None:
                continue
            if self.rows_per_slot.get(slot):
                self.resident[f"{name}\0retired\0{slot}"] = slot  # unique: a name may be retired twice
            else:
                self.bank.clear(slot)

    def _slot_for(self, adapter: str | None) -> int | None:
        """A resident slot for ``adapter`` (0 for the base), loading it if a slot is free; None = wait."""
        if adapter is None:
            return 0
        if adapter not in self.adapters:
            raise UnknownAdapter(adapter)
        if adapter in self.resident:
            self.resident.move_to_end(adapter)
            return self.resident[adapter]
        used = set(self.resident.values())
        free = next((s for s in range(1, self.max_loras + 1) if s not in used), None)
        if free is None:  # evict the least recently used resident adapter no running row needs
            victim = next((n for n, s in self.resident.items() if not self.rows_per_slot.get(s)), None)
            if victim is None:
                return None
            free = self.resident.pop(victim)
            self.evictions += 1
        self.slot_loads += 1
        with self.cond:
            weights = self.cpu_cache.get(adapter)
            path = self.adapters.get(adapter)
            if weights is not None:
                self.cpu_cache.move_to_end(adapter)
        if weights is None:
            if path is None:  # unloaded in the meantime
                raise UnknownAdapter(adapter)
            weights = read_adapter(adapter, path, max_rank=self.max_lora_rank, layer_shapes=self.layer_shapes)
            with self.cond:
                self._cache_weights(weights)
        self.bank.write(free, weights)
        self.slot_seeds[free] = f"adapter:{weights.serial}"
        self.resident[adapter] = free
        return free

    def _admit(self, incoming: list[Generation]) -> None:
        waiting: list[Generation] = []
        kv_full = False  # once a request waits for KV cache, later ones wait behind it (no starvation)
        for gen in incoming:
            if kv_full or len(self.running) + len(self.prefilling) >= self.max_batch:
                waiting.append(gen)
                continue
            if not gen.prompt_ids or len(gen.prompt_ids) >= self.max_context:
                gen.emit(("error", (f"the prompt has {len(gen.prompt_ids)} tokens; this model's context is "
                                    f"{self.max_context}")))
                continue
            if self.fast:
                need = self._kv_bytes_with(gen)
                if need > self.kv_cache_bytes:
                    if self.running or self.prefilling:  # wait for rows to finish and free KV cache
                        waiting.append(gen)
                        kv_full = True
                        continue
                    gen.emit(("error", (f"the request needs {need} bytes of KV cache, above this engine's "
                                        f"budget of {self.kv_cache_bytes} (--kv-cache-bytes)")))
                    continue
            try:
                slot = self._slot_for(gen.adapter)
            except UnknownAdapter:
                gen.emit(("error", f"adapter '{gen.adapter}' was unloaded"))
                continue
            if slot is None:
                waiting.append(gen)
                continue
            gen.slot = slot
            self.rows_per_slot[slot] = self.rows_per_slot.get(slot, 0) + 1
            self._prefill(gen) if not self.fast else self._queue_prefill(gen)
        if waiting:
            with self.cond:
                self.pending.extendleft(reversed(waiting))

    def _prefill(self, gen: Generation) -> None:
        ids = torch.tensor([gen.prompt_ids], dtype=torch.long)
        self.bank.set_rows([gen.slot])
        out = self.model(
            input_ids=ids, position_ids=torch.arange(ids.shape[1]).unsqueeze(0),
            past_key_values=DynamicCache(config=self.model.config), use_cache=True,
        )
        gen.position = ids.shape[1]
        if self._advance(gen, out.logits[0, -1]):
            self._release(gen)
            return
        self._merge(out.past_key_values, torch.ones(1, ids.shape[1], dtype=torch.long))
        self.running.append(gen)

    def _decode_step(self) -> None:
        rows = self.running
        assert self.cache is not None and self.mask is not None
        input_ids = torch.tensor([[g.output_ids[-1]] for g in rows], dtype=torch.long)
        positions = torch.tensor([[g.position] for g in rows], dtype=torch.long)
        mask = torch.cat([self.mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
        self.bank.set_rows([g.slot for g in rows])
        out = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions,
            past_key_values=self.cache, use_cache=True,
        )
        self.cache, self.mask = out.past_key_values, mask
        self.steps += 1
        keep: list[int] = []
        for i, gen in enumerate(rows):
            gen.position += 1
            if self._advance(gen, out.logits[i, -1]):
                self._release(gen)
            else:
                keep.append(i)
        if len(keep) != len(rows):
            self._select(keep)

    # ----- the static-cache path ------------------------------------------------------------------
    #
    # Row i of the running batch is row i of every layer's preallocated K/V buffer (see StaticKV), and
    # writes position p at column p % length, where length is the layer's sliding window (a ring) or
    # the buffer's capacity (full layers). Each step builds one boolean mask per layer length, which
    # the attention function (registered with transformers as "modelyard_static") hands to
    # transformers' own SDPA; transformers' per-step mask creation is skipped. A finished row's last
    # batch row moves into its place: nothing else is copied when rows join or leave.

    def _reserve(self, gen: Generation) -> int:
        return min(len(gen.prompt_ids) + gen.params.max_tokens, self.max_context)

    def _kv_bytes_with(self, gen: Generation) -> int:
        rows = self.running + self.prefilling
        capacity = max([self._reserve(gen)] + [self._reserve(g) for g in rows])
        return self.kv.bytes_for(len(rows) + 1, _round_up(capacity, self.max_context))

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, **extra: Any) -> torch.Tensor:
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=_NO_MASK,
                         use_cache=True, **{self._cache_arg: self.kv}, **extra)
        return out.logits

    def _queue_prefill(self, gen: Generation) -> None:
        """Give ``gen`` the next free cache row; its prompt is read by the next prefill passes."""
        rows = self.running + self.prefilling
        capacity = max([self._reserve(gen)] + [self._reserve(g) for g in rows])
        self.kv.ensure(len(rows) + 1, _round_up(capacity, self.max_context), self.max_batch, self.kv_cache_bytes)
        gen.row, gen.prefilled = len(rows), 0
        if self.prefix.enabled:
            seed, block = self.slot_seeds[gen.slot], self.prefix.block
            found = self.prefix.match(seed, gen.prompt_ids)
            if found and self.kv.write_prefix(gen.row, found, block):
                gen.prefilled = gen.cached = len(found) * block
            if len(gen.prompt_ids) // block > gen.prefilled // block:  # full blocks to keep once read
                gen.capture = [[] for _ in self.windows]
        self.prefilling.append(gen)

    def _prefill_packed(self) -> None:
        """One forward pass over up to ``prefill_chunk`` prompt tokens of the waiting rows, first come first
        served, packed into one sequence (each row's tokens at their own positions, with its own adapter; a
        long prompt takes several passes, so running rows keep decoding in between). Each segment attends
        to its row's earlier chunks and to itself only (see :meth:`StaticKV.start_packed`). Rows whose
        prompt is complete get their first token and join the decode batch."""
        budget, segments = self.prefill_chunk, []
        for gen in self.prefilling:
            if budget <= 0:
                break
            count = min(len(gen.prompt_ids) - gen.prefilled, budget)
            segments.append((gen, gen.prefilled, count))
            budget -= count
        ids = [t for gen, start, count in segments for t in gen.prompt_ids[start:start + count]]
        positions = torch.cat([torch.arange(start, start + count) for _, start, count in segments])
        self.bank.set_rows([gen.slot for gen, _, count in segments for _ in range(count)])
        last, offset = [], 0
        for gen, start, count in segments:
            offset += count
            if start + count == len(gen.prompt_ids):
                last.append(offset - 1)
        done = [gen for gen, start, count in segments if start + count == len(gen.prompt_ids)]
        greedy = [g.params.plain_greedy for g in done]
        head = self._greedy_head() if done and all(greedy) else None
        self.kv.start_packed([(gen.row, start, count) for gen, start, count in segments],
                             [gen.capture for gen, _, _ in segments])
        try:
            with head.picking() if head is not None else contextlib.nullcontext():
                logits = self._forward(torch.tensor([ids]), positions.unsqueeze(0),
                                       logits_to_keep=torch.tensor(last, dtype=torch.long))[0]
        finally:
            self.kv.packed = None
        for gen, start, count in segments:
            gen.prefilled = start + count
        for gen in done:
            if gen.capture is not None:
                captured = [(torch.cat([k for k, _ in chunks], dim=1), torch.cat([v for _, v in chunks], dim=1))
                            for chunks in gen.capture]
                gen.capture = None
                self.prefix.store(self.slot_seeds[gen.slot], gen.prompt_ids, gen.cached, captured)
        if head is not None:
            tokens: list[int | None] = list(head.tokens)
        else:
            tokens = first_argmax(logits) if any(greedy) else [None] * len(done)
        for i, gen in enumerate(done):
            gen.position = len(gen.prompt_ids)
            finished = self._advance(gen, None if head else logits[i], token=tokens[i] if greedy[i] else None)
            self.prefilling.remove(gen)
            if finished:
                self._release(gen)
                self._compact()
            else:  # into the decode batch: decode rows are the cache's first rows
                target = len(self.running)
                if gen.row != target:
                    other = next(g for g in self.prefilling if g.row == target)
                    self.kv.swap(gen.row, target)
                    other.row, gen.row = gen.row, target
                self.running.append(gen)

    def _compact(self) -> None:
        """Fill holes left by finished rows: decode rows stay rows 0..len(running)-1, rows still in
        prefill take the rows right after them."""
        used = len(self.running) + len(self.prefilling)
        taken = {g.row for g in self.prefilling}
        holes = [r for r in range(len(self.running), used) if r not in taken]
        movers = sorted((g for g in self.prefilling if g.row >= used), key=lambda g: g.row)
        for hole, gen in zip(holes, movers, strict=True):
            self.kv.move(gen.row, hole)
            gen.row = hole

    def _decode_static(self) -> None:
        rows = self.running
        positions = torch.tensor([g.position for g in rows], dtype=torch.long)
        self.kv.start_decode(positions)
        self.bank.set_rows([g.slot for g in rows])
        greedy = [g.params.plain_greedy for g in rows]
        ids = torch.tensor([[g.output_ids[-1]] for g in rows])
        head = self._greedy_head() if all(greedy) else None
        if head is not None:  # every row greedy: tokens from the head, no logits
            with head.picking():
                self._forward(ids, positions.unsqueeze(1))
            tokens: list[int | None] = list(head.tokens)
        else:
            logits = self._forward(ids, positions.unsqueeze(1))[:, -1]
            tokens = first_argmax(logits) if any(greedy) else [None] * len(rows)  # the batch at once
        self.steps += 1
        done: list[int] = []
        for i, gen in enumerate(rows):
            gen.position += 1
            token = tokens[i] if greedy[i] else _sample(logits[i], gen)
            if self._advance(gen, token=token):
                self._release(gen)
                done.append(i)
        for i in reversed(done):  # the last row fills the gap
            last = len(self.running) - 1
            if i != last:
                self.kv.move(last, i)
                self.running[i] = self.running[last]
                self.running[i].row = i
            self.running.pop()
        if done and self.prefilling:
            self._compact()

    def _greedy_head(self) -> GreedyHead | None:
        """The head's greedy mode, unless the head is not ours as built (an adapter targets it)."""
        head = self.greedy_head
        return head if head is not None and self.model.get_output_embeddings() is head else None

    def _probe_static_path(self) -> bool:
        """Run a short prompt through the static-cache path and through a plain forward pass; use the
        static path only if the model calls its hooks (cache.update and transformers' attention
        interface, every layer) and the logits agree. Otherwise the generic path serves, correctly."""
        self._cache_arg = "cache" if "cache" in _parameters(self.model.forward) else "past_key_values"
        layers = len(self.windows)
        n = min(min([w for w in self.windows if w] or [16]) + 4, self.max_context - 4, 64)
        ids = torch.arange(3, 3 + n + 3).remainder(self.vocab_size).unsqueeze(0)
        try:
            if "logits_to_keep" not in _parameters(self.model.forward):  # prefill passes keep the rows' last logits
                raise RuntimeError("the model's forward takes no logits_to_keep")
            attention = [m for m in self.model.modules() if hasattr(m, "layer_idx") and hasattr(m, "o_proj")]
            if len(attention) != layers:
                raise RuntimeError(f"{len(attention)} attention modules for {layers} cache layers")
            for module in attention:
                module._modelyard_kv = self.kv
            config = self.model.config
            original = config._attn_implementation
            with torch.inference_mode():
                reference = self.model(input_ids=ids, use_cache=False).logits[0]
                config._attn_implementation = _ATTENTION
                for sub in ("text_config",):
                    if getattr(config, sub, None) is not None:
                        getattr(config, sub)._attn_implementation = _ATTENTION
                self.kv.ensure(1, _round_up(n + 3, self.max_context), self.max_batch, self.kv_cache_bytes)
                self.kv.calls = 0
                got = []
                for start, end in ((0, n // 2), (n // 2, n)):  # in two chunks: the second reads the first's keys
                    self.kv.start_packed([(0, start, end - start)])
                    got.append(self._forward(ids[:, start:end], torch.arange(start, end).unsqueeze(0))[0])
                self.kv.packed = None
                for p in range(n, n + 3):
                    self.kv.start_decode(torch.tensor([p]))
                    got.append(self._forward(ids[:, p:p + 1], torch.tensor([[p]]))[0])
                calls = self.kv.calls
            got_logits = torch.cat(got)
            if calls != layers * 5:
                raise RuntimeError(f"the attention hook ran {calls} times for {layers} layers x 5 passes")
            tolerance = 1e-3 if self.dtype == torch.float32 else 5e-2
            scale = float(reference.abs().max()) or 1.0
            if not torch.allclose(got_logits.float(), reference.float(), atol=tolerance * scale, rtol=0):
                raise RuntimeError("logits differ from the model's own forward pass")
            return True
        except Exception as exc:  # noqa: BLE001 - any failure means: serve on the generic path
            config = self.model.config
            config._attn_implementation = original if "original" in locals() else config._attn_implementation
            log.warning("the static KV cache path does not fit %s (%s): serving on the generic path (slower)",
                        type(self.model).__name__, exc)
            self.kv = StaticKV(self.windows)
            return False
        finally:
            self.kv.packed = None

    # ----- per-row token handling ----------------------------------------------------------------

    def _advance(self, gen: Generation, logits: torch.Tensor | None = None, token: int | None = None) -> bool:
        """Sample one token for ``gen`` (or take ``token``), emit new text; True when the request is finished."""
        if token is None:
            token = _sample(logits, gen)
        if token in self.eos_token_ids:
            return self._finish(gen, "stop")
        gen.output_ids.append(token)
        gen.text = self.tokenizer.decode(gen.output_ids, skip_special_tokens=True)
        for stop in gen.params.stop:
            at = gen.text.find(stop)
            if stop and at != -1:
                gen.text = gen.text[:at]
                return self._finish(gen, "stop")
        if len(gen.output_ids) >= gen.params.max_tokens or gen.position + 1 >= self.max_context:
            return self._finish(gen, "length")
        # hold back a tail that could still become a stop string or an incomplete character
        hold = max((len(s) - 1 for s in gen.params.stop), default=0)
        safe = len(gen.text) - hold
        if gen.text.endswith("\ufffd"):
            safe = min(safe, len(gen.text) - 1)
        if safe > gen.sent:
            gen.emit(("text", gen.text[gen.sent:safe]))
            gen.sent = safe
        return False

    def _finish(self, gen: Generation, reason: str) -> bool:
        if len(gen.text) > gen.sent:
            gen.emit(("text", gen.text[gen.sent:]))
            gen.sent = len(gen.text)
        gen.finish_reason = reason
        gen.emit(("done", reason))
        return True

    def _release(self, gen: Generation) -> None:
        count = self.rows_per_slot.get(gen.slot, 0) - 1
        self.rows_per_slot[gen.slot] = max(count, 0)
        if gen.slot and count <= 0:
            name = next((n for n, s in self.resident.items() if s == gen.slot), None)
            if name is not None and "\0retired" in name:  # unloaded or replaced while it ran
                del self.resident[name]
                self.bank.clear(gen.slot)

    # ----- batch cache surgery -------------------------------------------------------------------
    #
    # The batch has ``columns`` = ``self.mask.shape[1]`` positions, left-padded per row; each row's real
    # tokens are its last columns, contiguous, so column distances are position distances and the
    # sliding-window mask, which transformers builds over columns, is each row's own window. A full
    # layer holds every column; a sliding layer (as transformers' DynamicSlidingWindowLayer does)
    # only the last ``window - 1`` and counts ``columns`` in ``cumulative_length``, which is what its
    # mask offsets are computed from. Rebuilt caches keep that invariant layer by layer.

    def _merge(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        if self.cache is None or self.mask is None or not self.running:
            self.cache, self.mask = cache, mask
            return
        columns = max(self.mask.shape[1], mask.shape[1])
        parts = []
        for window, old, new in zip(self.windows, self.cache.layers, cache.layers, strict=True):
            width = _stored(window, columns)
            parts.append(tuple(
                torch.cat([_left_pad(a[:, :, -width:], width, 2), _left_pad(b[:, :, -width:], width, 2)])
                for a, b in ((old.keys, new.keys), (old.values, new.values))
            ))
        self.cache = self._cache_from(parts, columns)
        self.mask = torch.cat([_left_pad(self.mask, columns, 1), _left_pad(mask, columns, 1)])

    def _select(self, keep: list[int]) -> None:
        self.running = [self.running[i] for i in keep]
        if not keep:
            self.cache, self.mask = None, None
            return
        index = torch.tensor(keep, dtype=torch.long)
        mask = self.mask.index_select(0, index)
        start = int((mask.sum(0) > 0).nonzero()[0])  # drop columns that are padding for every row
        columns = mask.shape[1] - start
        parts = []
        for window, layer in zip(self.windows, self.cache.layers, strict=True):
            width = _stored(window, columns)
            parts.append((layer.keys.index_select(0, index)[:, :, -width:],
                          layer.values.index_select(0, index)[:, :, -width:]))
        self.cache = self._cache_from(parts, columns)
        self.mask = mask[:, start:]

    def _cache_from(self, parts: list[tuple[torch.Tensor, torch.Tensor]], columns: int) -> DynamicCache:
        """A cache of the model's layer kinds holding ``parts`` (each already cut to what its layer
        stores) for a batch of ``columns`` positions."""
        cache = DynamicCache(config=self.model.config)
        for layer, (keys, values) in zip(cache.layers, parts, strict=True):
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
            if layer.is_sliding:
                layer.cumulative_length = columns
        return cache


_PREFIX_CACHE_BYTES = 512 << 20  # the prefix cache's default budget (at most a quarter of the KV cache's)
_GREEDY_HEAD_WEIGHTS = 1 << 24  # an output head this large (64 MiB in fp32) gets a GreedyHead by default

_ATTENTION = "modelyard_static"
_NO_MASK = torch.ones(1, 1, 1, 1, dtype=torch.bool)  # 4D: transformers skips building masks; ours are used


def _static_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention with the engine's mask for this layer (see :class:`StaticKV`)."""
    kv = getattr(module, "_modelyard_kv", None)
    if kv is not None and kv.packed is not None:
        kv.calls += 1
        return kv.attend_packed(module, query, key, value, **kwargs)
    if kv is None or kv.masks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kv.calls += 1
    return sdpa_attention_forward(module, query, key, value, kv.masks[module.layer_idx], **kwargs)


AttentionInterface.register(_ATTENTION, _static_attention)


class StaticKV:
    """Preallocated K/V buffers, one pair per layer, ``[rows, kv_heads, length, head_dim]``.

    Position ``p`` of a row lives at column ``p % length``: a sliding layer's length is its window (a
    ring: it never holds more), a full layer's is the capacity, at least every running row's prompt
    plus max_tokens. transformers calls :meth:`update` from each attention layer; it writes the new
    keys/values in place and returns what the layer attends over, with ``masks`` set for it (decode),
    or the pass's own keys/values, its rows' earlier ones kept aside for :meth:`attend_packed` (prefill).
    """

    def __init__(self, windows: list[int | None]) -> None:
        self.windows = windows
        self.keys: list[torch.Tensor | None] = [None] * len(windows)
        self.values: list[torch.Tensor | None] = [None] * len(windows)
        self.rows = 0
        self.capacity = 0
        self.shapes: tuple[int, int, torch.dtype] | None = None  # kv heads, head dim, dtype (seen at first use)
        self.packed: list[tuple[int, int, int]] | None = None  # prefill segments: (row, start, count)
        self.captures: list[list[list[tuple[torch.Tensor, torch.Tensor]]] | None] = []
        self._earlier: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        self._segment_masks: dict[tuple[int, int, int, int | None], torch.Tensor | None] = {}
        self.masks: list[torch.Tensor | None] | None = None
        self.calls = 0
        self._decode: dict[int, tuple[torch.Tensor, int]] = {}
        self._rows_index = torch.zeros(0, dtype=torch.long)

    def length(self, layer: int, capacity: int | None = None) -> int:
        capacity = self.capacity if capacity is None else capacity
        window = self.windows[layer]
        return capacity if window is None else min(window, capacity)

    def bytes_for(self, rows: int, capacity: int) -> int:
        if self.shapes is None:
            return 0
        heads, dim, dtype = self.shapes
        element = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
        return sum(2 * rows * heads * self.length(i, capacity) * dim * element for i in range(len(self.windows)))

    def ensure(self, rows: int, capacity: int, max_rows: int, budget: int) -> None:
        """Grow the buffers to hold ``rows`` rows of ``capacity`` positions (rows rounded up to a power
        of two, within ``max_rows`` and ``budget`` bytes), keeping what they hold."""
        if rows <= self.rows and capacity <= self.capacity:
            return
        want_rows = max(rows, self.rows)
        grown = min(max(1 << (want_rows - 1).bit_length(), want_rows), max(max_rows, want_rows))
        capacity = max(capacity, self.capacity)
        if grown > want_rows and self.bytes_for(grown, capacity) > budget:
            grown = want_rows
        old_rows = self.rows
        self.rows, self.capacity = grown, capacity
        if self.shapes is None:
            return  # allocated at the first update, when the layers' shapes are known
        heads, dim, dtype = self.shapes
        for i in range(len(self.windows)):
            for store in (self.keys, self.values):
                old = store[i]
                new = torch.zeros(grown, heads, self.length(i), dim, dtype=dtype)
                if old is not None:
                    new[:old_rows, :, : old.shape[2]] = old[:old_rows]
                store[i] = new

    def move(self, src: int, dst: int) -> None:
        for store in (self.keys, self.values):
            for tensor in store:
                if tensor is not None:
                    tensor[dst] = tensor[src]

    def swap(self, a: int, b: int) -> None:
        for store in (self.keys, self.values):
            for tensor in store:
                if tensor is not None:
                    tensor[[a, b]] = tensor[[b, a]]

    def start_packed(self, segments: list[tuple[int, int, int]],
                     captures: list[list[list[tuple[torch.Tensor, torch.Tensor]]] | None] | None = None) -> None:
        """A prefill pass next: one packed sequence of segments ``(row, start, count)``, each the prompt
        positions ``start .. start + count - 1`` of a row whose earlier positions are in the cache. Where
        ``captures`` has a list for a segment, each layer appends the segment's keys and values to it."""
        self.masks = None
        self.packed = segments
        self.captures = captures or [None] * len(segments)
        self._segment_masks = {}

    def write_prefix(self, row: int, blocks: list[list[tuple[torch.Tensor, torch.Tensor]]], size: int) -> bool:
        """Put cached keys and values of positions ``0 .. len(blocks) * size - 1`` in ``row`` (False: the
        buffers are not allocated yet). A ring keeps the last of them, as if they had been prefilled."""
        if any(k is None for k in self.keys):
            return False
        end = len(blocks) * size
        for layer, (keys, values) in enumerate(zip(self.keys, self.values, strict=True)):
            first = max(0, end - keys.shape[2])  # a ring holds the last ``length`` positions only
            for index, block in enumerate(blocks):
                low, high = max(index * size, first), (index + 1) * size
                if low >= high:
                    continue
                cols = torch.arange(low, high).remainder(keys.shape[2])
                k, v = block[layer]
                keys[row][:, cols] = k[:, low - index * size:]
                values[row][:, cols] = v[:, low - index * size:]
        return True

    def attend_packed(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
        """SDPA for each segment of a packed pass apart: its queries over its row's earlier keys and its
        own, causal (and windowed on sliding layers); no work is spent on other rows' keys."""
        window = self.windows[module.layer_idx]
        kwargs.pop("is_causal", None)
        outputs, offset = [], 0
        for (_, start, count), earlier in zip(self.packed, self._earlier, strict=True):
            q = query[:, :, offset:offset + count]
            k, v = key[:, :, offset:offset + count], value[:, :, offset:offset + count]
            if earlier is not None:
                k, v = torch.cat([earlier[0], k], dim=2), torch.cat([earlier[1], v], dim=2)
            mask = self._segment_mask(start, count, k.shape[2] - count, window)
            outputs.append(sdpa_attention_forward(module, q, k, v, mask, **kwargs)[0])
            offset += count
        return torch.cat(outputs, dim=1), None

    def _segment_mask(self, start: int, count: int, earlier: int, window: int | None) -> torch.Tensor | None:
        """Queries at ``start ..`` over keys at ``start - earlier ..``: causal, within the window; None where
        SDPA's own causal mask is the same (no earlier keys, the window not reached)."""
        if earlier == 0 and (window is None or count <= window):
            return None
        key = (start, count, earlier, window)
        if key not in self._segment_masks:
            q = torch.arange(start, start + count)[:, None]
            k = torch.arange(start - earlier, start + count)[None, :]
            mask = k <= q
            if window is not None:
                mask &= q - k < window
            self._segment_masks[key] = mask[None, None]
        return self._segment_masks[key]

    def start_decode(self, positions: torch.Tensor) -> None:
        """One token for each of the first ``len(positions)`` rows, at those positions."""
        self.packed = None
        rows = positions.shape[0]
        if self._rows_index.shape[0] != rows:
            self._rows_index = torch.arange(rows)
        top = int(positions.max())
        per_length: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}
        masks: list[torch.Tensor | None] = []
        for i in range(len(self.windows)):
            length = self.length(i)
            if length not in per_length:
                used = min(length, top + 1)
                columns = torch.arange(used)
                mask = (columns[None, :] <= positions[:, None]) | (positions[:, None] >= length - 1)
                per_length[length] = (positions.remainder(length), used, mask[:, None, None, :])
            masks.append(per_length[length][2])
        self._decode = {length: (cols, used) for length, (cols, used, _) in per_length.items()}
        self.masks = masks

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer_idx] is None:
            _, heads, _, dim = key_states.shape
            if self.shapes is None:
                self.shapes = (heads, dim, key_states.dtype)
            for store in (self.keys, self.values):
                store[layer_idx] = torch.zeros(self.rows, heads, self.length(layer_idx), dim, dtype=key_states.dtype)
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        length = keys.shape[2]
        if self.packed is not None:
            earlier: list[tuple[torch.Tensor, torch.Tensor] | None] = []
            offset = 0
            for (row, start, count), capture in zip(self.packed, self.captures, strict=True):
                if capture is not None:
                    capture[layer_idx].append((key_states[0, :, offset:offset + count].clone(),
                                               value_states[0, :, offset:offset + count].clone()))
                low = max(0, start - length)  # a ring holds the last ``length`` positions before ``start``
                if low < start:  # read before this pass overwrites the ring
                    cols = torch.arange(low, start).remainder(length)
                    earlier.append((keys[row][:, cols].unsqueeze(0), values[row][:, cols].unsqueeze(0)))
                else:
                    earlier.append(None)
                first = max(start, start + count - length)  # a ring shorter than the segment keeps its end
                cols = torch.arange(first, start + count).remainder(length)
                new = slice(offset + first - start, offset + count)
                keys[row][:, cols] = key_states[0, :, new]
                values[row][:, cols] = value_states[0, :, new]
                offset += count
            self._earlier = earlier
            return key_states, value_states
        columns, used = self._decode[length]
        rows = self._rows_index
        keys[rows, :, columns] = key_states[:, :, 0]
        values[rows, :, columns] = value_states[:, :, 0]
        count = rows.shape[0]
        return keys[:count, :, :used], values[:count, :, :used]


def _round_up(capacity: int, limit: int) -> int:
    return min(-(-capacity // 128) * 128, limit)


def _default_kv_bytes() -> int:
    """Half the memory available when the engine starts (MemAvailable), else 4 GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 4 << 30


def _parameters(function: Callable[..., Any]) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()


def _stored(window: int | None, columns: int) -> int:
    """How many of ``columns`` positions a layer keeps: all, or the last ``window - 1`` (sliding)."""
    return columns if window is None else min(columns, window - 1)


def _cache_windows(config: Any) -> list[int | None]:
    """Each layer's sliding window (None: full attention), from the model's config. Other kinds
    (chunked, linear or shared attention, ...) are refused: their caches are not rebuilt here."""
    layer_types, kwargs = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    unsupported = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
    if unsupported:
        raise ValueError(f"the built-in engine does not support {', '.join(unsupported)} layers")
    return [kw["sliding_window"] if kind == "sliding_attention" else None for kind, kw in zip(layer_types, kwargs)]


def _generation_config(model_path: str) -> GenerationConfig | None:
    try:
        return GenerationConfig.from_pretrained(model_path)
    except OSError:  # the checkpoint has no generation_config.json
        return None


def _ids(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(value)} if isinstance(value, int) else {int(v) for v in value}


def _eos_token_ids(generation: GenerationConfig | None, config: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a generation: generation_config.json's ``eos_token_id`` (an id or a list:
    chat checkpoints list their end-of-turn tokens there), the model config's, and the tokenizer's."""
    ids = _ids(getattr(generation, "eos_token_id", None))
    ids |= _ids(getattr(config.get_text_config(decoder=True), "eos_token_id", None))
    ids |= _ids(tokenizer.eos_token_id)
    return ids


SAMPLING_DEFAULTS = {"temperature": float, "top_p": float, "top_k": int, "repetition_penalty": float}


def _sampling_defaults(generation: GenerationConfig | None) -> dict[str, float | int]:
    """The sampling parameters generation_config.json sets, which vLLM uses as defaults for requests
    that leave them unset (whatever ``do_sample`` says)."""
    if generation is None:
        return {}
    return {name: cast(getattr(generation, name)) for name, cast in SAMPLING_DEFAULTS.items()
            if getattr(generation, name, None) is not None}


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.ndim - dim - 1) + [missing, 0]
    return F.pad(tensor, pad)


def _penalised(logits: torch.Tensor, gen: Generation) -> torch.Tensor:
    params = gen.params
    logits = logits.float().clone()
    if (params.presence_penalty or params.frequency_penalty) and gen.output_ids:
        ids, counts = torch.tensor(gen.output_ids).unique(return_counts=True)
        logits[ids] -= params.presence_penalty + params.frequency_penalty * counts.float()
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(gen.prompt_ids + gen.output_ids).unique()
        values = logits[seen]
        logits[seen] = torch.where(values > 0, values / params.repetition_penalty,
                                   values * params.repetition_penalty)
    for token, bias in params.logit_bias.items():
        logits[token] += bias
    return logits


def _sample(logits: torch.Tensor, gen: Generation) -> int:
    params = gen.params
    if params.shapes_logits:
        logits = _penalised(logits, gen)
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        threshold = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(ordered, dim=-1) - ordered < params.top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen.generator))
