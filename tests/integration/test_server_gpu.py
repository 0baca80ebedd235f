"""The server on CUDA: the default model and encoder on the GPU, and the GPU gauges in /metrics."""
from __future__ import annotations

import httpx
import openai
import pytest

import labkit

pytestmark = [pytest.mark.integration, pytest.mark.gpu]


def test_serves_chat_and_embeddings_on_cuda_with_gpu_metrics():
    with labkit.serve("smollm2-135m-instruct", encoder="minilm-l6-v2", device="cuda", port=0) as server:
        assert server.app.state.services.llm.device.type == "cuda"
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        chunks = list(client.chat.completions.create(
            model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8,
            temperature=0, stream=True, stream_options={"include_usage": True}))
        assert chunks[-1].usage.completion_tokens >= 1
        assert len(client.embeddings.create(model="minilm-l6-v2", input="hi").data[0].embedding) == 384
        metrics = httpx.get(server.url + "/metrics").text
        assert "labkit:gpu_memory_used_bytes" in metrics and "labkit:gpu_utilization_perc" in metrics
