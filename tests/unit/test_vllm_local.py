"""The local vLLM adapter's platform defaults and its death report, without starting vLLM."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine_adapters.vllm_local import (
    CPU,
    LocalModelSpec,
    VllmLocalAdapter,
    engine_args_for,
    env_defaults_for,
    is_cross_encoder,
    set_env_defaults,
)

CUDA = "cuda"


def spec(**engine_args: object) -> LocalModelSpec:
    return LocalModelSpec(name="m", path="/models/m", dtype="bfloat16", max_model_len=2048, engine_args=engine_args)


def test_cpu_runs_eager_unless_the_model_says_otherwise() -> None:
    assert engine_args_for(spec(), CPU)["enforce_eager"] is True
    assert engine_args_for(spec(enforce_eager=False), CPU)["enforce_eager"] is False


def test_cuda_keeps_vllms_own_defaults() -> None:
    args = engine_args_for(spec(), CUDA)
    assert "enforce_eager" not in args  # CUDA graphs and torch.compile stay on
    assert args == {
        "model": "/models/m",
        "served_model_name": ["m"],
        "dtype": "bfloat16",
        "max_model_len": 2048,
        "runner": "auto",
        "disable_log_stats": False,
    }
    assert engine_args_for(spec(enforce_eager=True, gpu_memory_utilization=0.5), CUDA)["enforce_eager"] is True


def test_the_models_engine_args_win_over_ours() -> None:
    args = engine_args_for(spec(max_model_len=512, runner="generate"), CPU)
    assert args["max_model_len"] == 512 and args["runner"] == "generate"


def test_cpu_env_defaults_bind_the_given_cores_and_use_loopback() -> None:
    assert env_defaults_for(CPU, [0, 1, 3]) == {
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_CPU_OMP_THREADS_BIND": "0,1,3",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_HOST_IP": "127.0.0.1",
    }


def test_no_env_defaults_off_cpu() -> None:
    # Nothing pins VLLM_HOST_IP to loopback (multi-node), nothing touches the hub's variables.
    assert env_defaults_for(CUDA, [0, 1]) == {}


def test_env_defaults_never_override_the_operator() -> None:
    environ = {"VLLM_HOST_IP": "10.0.0.7"}
    set_env_defaults(env_defaults_for(CPU, [0]), environ)
    assert environ["VLLM_HOST_IP"] == "10.0.0.7" and environ["VLLM_CPU_KVCACHE_SPACE"] == "2"


class FakeEngineManager:
    def __init__(self, finished: dict[str, int]) -> None:
        self.finished = finished

    def finished_procs(self) -> dict[str, int]:
        return self.finished


def engine(errored: bool, finished: dict[str, int] | None = None) -> SimpleNamespace:
    """The parts of vLLM's AsyncLLM that death_cause reads."""
    manager = FakeEngineManager(finished) if finished is not None else None
    return SimpleNamespace(
        errored=errored, engine_core=SimpleNamespace(resources=SimpleNamespace(engine_manager=manager))
    )


@pytest.mark.parametrize(
    ("finished", "cause"),
    [
        ({"EngineCore": -9}, "EngineCore was killed by SIGKILL"),
        ({"EngineCore": 1}, "EngineCore exited with code 1"),
        ({}, "the engine reported a fatal error (see vLLM's log above)"),  # dead, its process not yet reaped
        (None, "the engine reported a fatal error (see vLLM's log above)"),  # vLLM keeps no engine manager
    ],
)
def test_death_cause_names_how_the_engine_process_ended(finished: dict[str, int] | None, cause: str) -> None:
    adapter = VllmLocalAdapter(spec(), platform=CPU)
    adapter._engine = engine(errored=True, finished=finished)
    assert adapter.death_cause() == cause


def test_no_death_cause_while_running_or_before_start() -> None:
    adapter = VllmLocalAdapter(spec(), platform=CPU)
    assert adapter.death_cause() is None
    adapter._engine = engine(errored=False, finished={})
    assert adapter.death_cause() is None


def test_kv_events_turn_on_vllms_zmq_publisher_and_the_prefix_cache() -> None:
    events = LocalModelSpec(name="m", path="/models/m", kv_events=("tcp://*:5557", "tcp://*:5558"))
    args = engine_args_for(events, CPU)
    assert args["kv_events_config"] == {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": "tcp://*:5557",
        "replay_endpoint": "tcp://*:5558",
    }
    assert args["enable_prefix_caching"] is True
    assert "kv_events_config" not in engine_args_for(spec(), CPU)  # off unless asked for
    assert VllmLocalAdapter(events).models()[0].kv_events == ("tcp://*:5557", "tcp://*:5558")


def test_a_one_label_sequence_classifier_is_a_cross_encoder_and_nothing_else_is() -> None:
    def config(architectures: list[str] | None, labels: int) -> SimpleNamespace:
        return SimpleNamespace(architectures=architectures, num_labels=labels)

    assert is_cross_encoder(config(["BertForSequenceClassification"], 1))
    assert not is_cross_encoder(config(["BertForSequenceClassification"], 3))  # a classifier: /classify
    assert not is_cross_encoder(config(["BertModel"], 1))  # an embedding model: cosine
    assert not is_cross_encoder(config(None, 1))
