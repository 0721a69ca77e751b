"""`VllmEngine`'s request building, on vLLM's real config, renderer and input processor (no engine
starts: the engine-core side is never reached). Serving through real engines is in the integration
tests (test_integration_openai.py, test_speculative_vllm.py)."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from server.engine import SamplingSettings
from server.vllm_engine import VllmEngine, _sampling_params


@pytest.fixture(scope="module")
def front_end(tmp_path_factory):
    """A `VllmEngine` whose `AsyncLLM` is only vLLM's front end (config, renderer, input processor)."""
    from vllm.renderers.registry import renderer_from_config
    from vllm.v1.engine.input_processor import InputProcessor

    from models.tiny import make_tiny_checkpoint

    model = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "base")
    engine = VllmEngine(str(model), engine_args={"max_model_len": 512})
    config = engine._build_args().create_engine_config()
    renderer = renderer_from_config(config)
    engine._llm = SimpleNamespace(renderer=renderer, model_config=config.model_config)
    return engine, InputProcessor(config, renderer)


def _engine_request(processor, prompt, settings):
    request = processor.process_inputs("r", prompt, _sampling_params(settings), supported_tasks=("generate",))
    fields = {k: getattr(request, k) for k in request.__struct_fields__ if k not in ("arrival_time", "request_id")}
    params = fields.pop("sampling_params")
    return fields, {k: getattr(params, k) for k in params.__struct_fields__ if k != "skip_clone"}


@pytest.mark.parametrize(
    "settings",
    [
        SamplingSettings(max_tokens=16, temperature=0.0, ignore_eos=True),
        SamplingSettings(max_tokens=4, temperature=0.7, stop=("\nUser:",), seed=3, n=2, logprobs=2, prompt_logprobs=1),
    ],
)
def test_the_rendered_prompt_makes_the_request_a_raw_token_prompt_makes(front_end, settings):
    # The engine renders token ids itself (on the event loop) rather than leave it to vLLM's worker
    # thread: the request that reaches the engine core must be the same.
    from vllm.inputs import TokensPrompt

    engine, processor = front_end
    ids = list(range(10, 30))
    rendered = engine._engine_input(ids)
    assert rendered["type"] == "token" and rendered["prompt_token_ids"] == ids
    assert _engine_request(processor, rendered, settings) == _engine_request(
        processor, TokensPrompt(prompt_token_ids=ids), settings
    )


def test_sampling_params_are_built_fresh_and_not_deep_copied_again():
    settings = SamplingSettings(max_tokens=8)
    first, second = _sampling_params(settings), _sampling_params(settings)
    assert first is not second and first.skip_clone and second.skip_clone


@pytest.mark.parametrize(
    "bf16, amx, stage_dtype, expected",
    [
        (False, False, None, "float32"),  # AVX2 only: bf16 would be emulated
        (False, False, "bfloat16", "bfloat16"),  # the stage's own choice stands
        (False, False, "auto", None),  # vLLM's auto, asked for by name, too
        (True, False, None, None),  # AVX512-BF16: vLLM's auto (bf16)
        (False, True, None, None),  # AMX
    ],
)
def test_engines_run_float32_where_the_cpu_has_no_native_bf16(monkeypatch, bf16, amx, stage_dtype, expected):
    import platform

    import torch

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    args = {"max_model_len": 512} | ({"dtype": stage_dtype} if stage_dtype else {})
    built = VllmEngine("some/model", engine_args=args)._build_args()
    assert built.dtype == (expected or "auto")


PREPARE_AND_EXIT = """
import os, sys
from pathlib import Path
from server.vllm_engine import prepare_engine_env
prepare_engine_env()
ipc = Path(os.environ["VLLM_RPC_BASE_PATH"])
(ipc / "a-socket-vllm-left").touch()
print(ipc)
"""


@pytest.mark.parametrize("preset", [False, True])
def test_vllms_ipc_sockets_go_to_a_directory_of_the_servers_own_removed_at_exit(tmp_path, preset):
    env = {k: v for k, v in os.environ.items() if k != "VLLM_RPC_BASE_PATH"}
    if preset:  # the user's choice is left alone, and so is what is in it
        env["VLLM_RPC_BASE_PATH"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", PREPARE_AND_EXIT], env=env, capture_output=True, text=True, check=True
    ).stdout
    ipc = Path(out.strip())
    if preset:
        assert ipc == tmp_path and (ipc / "a-socket-vllm-left").exists()
    else:
        assert ipc.name.startswith("stagechat-vllm-") and not ipc.exists()
