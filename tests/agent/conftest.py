"""A scripted LLM on loopback: planner and operator-synthesis requests get the scripted replies in order; every other request
(the LLM stages of a sample run) gets the loopback server's usual echo replies."""

from __future__ import annotations

import json
import time

import pytest
from aiohttp import web

from dataflow_assets.agent.planners import PLAN_SYSTEM
from dataflow_assets.agent.synth import SYNTH_SYSTEM
from tests.llm_server import LoopbackLLMServer


class ScriptedLLMServer(LoopbackLLMServer):
    def __init__(self, script: list[str], **kw):
        super().__init__(**kw)
        self.script = list(script)
        self.plan_requests: list[dict] = []

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()  # aiohttp caches the body: the parent can read it again
        messages = body.get("messages") or []
        if messages and messages[0].get("content") in (PLAN_SYSTEM, SYNTH_SYSTEM):
            self.requests += 1
            self.plan_requests.append(body)
            content = self.script.pop(0) if self.script else "{}"
            return web.json_response({
                "id": f"plan-{self.requests}", "object": "chat.completion", "created": int(time.time()), "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in messages), "completion_tokens": len(content.split())},
            })
        return await super()._chat(request)


@pytest.fixture
def scripted():
    servers = []

    def start(*replies) -> tuple[ScriptedLLMServer, object]:
        from resources.llm import make_client

        srv = ScriptedLLMServer([r if isinstance(r, str) else json.dumps(r) for r in replies]).start()
        servers.append(srv)
        client = make_client("openai", base_url=srv.base_url, model="scripted", api_key="test", cache=False, repair=False, max_retries=0)
        servers.append(client)
        return srv, client

    yield start
    for s in reversed(servers):
        (s.close if hasattr(s, "close") else s.stop)()
