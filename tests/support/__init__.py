"""Test support: every test double and helper process in one place, none of it shipped in the wheel.

Doubles of an engine or an instance, for the gateway's own logic only (never as proof that serving works):

- `scripted_engine`: `ScriptedAdapter`, an in-process engine on the EngineAdapter seam that paces tokens and
  injects faults from a `Script`.
- `scripted_app`: the app over ASGI (httpx's transport) on the scripted engine, for the front door's middleware.
- `scripted_gateway`: the same app served by the production server loop in its own process (signals, drain,
  TLS, JSON logs), for tests that need real sockets.
- `scripted_upstream`: an OpenAI/vLLM-shaped instance in its own process for the router's fault tests; it
  streams, fails on demand, counts, loads LoRA adapters and publishes vLLM's gauges, all set through `/control`.
- `scripted_paths`: the scripted upstream's further vLLM routes (Messages, rerank, score, pooling, audio).
- `fake_instance`: `FakeUpstream`, an in-process instance adapter for the router's unit tests.
- `bench_upstream`: a lean instance that costs almost nothing itself, for Suite 2 (router overhead).
- Not here: `bench.fleet.server`, Suite 4's simulated vLLM instances (a prefix cache, GPU step timing, KV events
  on vLLM's wire), many in one process; a benchmark tool, so it lives beside its suite. Its tests are
  `tests/bench/test_fleet_*.py`.

Real parts the tests start:

- `redis_server`: a real `redis-server` on a free port, for limits shared across replicas.
- `postgres_server`: a real PostgreSQL cluster (initdb, pg_ctl) in a temporary directory, for the response
  store shared by router replicas.
- `otlp_receiver`: a real OTLP/HTTP receiver that decodes the exporter's protobuf.
- `lora_fixture`: a tiny LoRA adapter for the real Gemma model, built on disk.
- `cross_encoder_fixture`: a tiny one-label cross-encoder (MiniLM config and tokenizer), built on disk.

Helpers every suite uses:

- `waiting`: `wait_until` and `until` (async), the one way a test waits for a condition, with a deadline.
- `tools`: `tool_missing`, which skips a test whose outside tool is missing, and fails it in CI.

One double stays beside its only user: the aiohttp upstream in `tests/unit/routing/test_openai_http.py`,
whose answers each test scripts byte by byte.
"""
