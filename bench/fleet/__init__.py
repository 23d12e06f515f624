"""Suite 4: routing at fleet scale, by simulation (`make bench-fleet`, `python -m bench.fleet`).

One asyncio process hosts many simulated vLLM instances, each on its own port, in front of which the real
tokenyard router runs unchanged (its own process). Modules, bottom up:

- `cache`: vLLM's prefix cache as a block pool (B tokens a block, C blocks, LRU eviction of free blocks),
  and the KV events it makes.
- `events`: those events on vLLM's own wire (ZMQ PUB batches in msgpack, a ROUTER socket for replay).
- `engine`: one GPU's scheduler and timing (max_num_seqs, a waiting queue, chunked prefill, decode steps),
  in simulated time that may run faster or slower than the wall clock.
- `server`: the HTTP face of an instance (chat and completions, /tokenize, /v1/models, /health, /metrics,
  /reset_prefix_cache) and the host of many (`python -m bench.fleet.server --instances 4 --port 9100`).
- `workloads`: the four workloads (shared system prompts, multi-turn sessions, one hot prefix, churn) and
  the offline oracle.
- `suite`: runs every policy over every workload through the router, writes bench/results/.
"""
