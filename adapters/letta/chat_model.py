"""A LangChain chat model over a live Letta turn: each call streams the turn's next assistant message.

Why a chat model: LangGraph's `messages` stream mode carries the chunks of chat-model calls made inside a node,
and that is the channel loom's AG-UI translator reads text, reasoning, tool-call and usage events from. The
Letta agent holds the conversation itself, so the input messages are not sent anywhere (the graph sends the new
user turn when it opens the stream, adapters/letta/client.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import agenerate_from_stream
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from loom.adapters.letta.stream import LettaTurn


class LettaChatModel(BaseChatModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    turn: LettaTurn = Field(exclude=True)
    cache: bool = False  # a cached answer would skip the live stream it is supposed to read

    @property
    def _llm_type(self) -> str:
        return "letta"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"agent_id": self.turn.agent_id}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params.update(ls_provider="letta", ls_model_name=self.turn.agent_id)  # the usage label in RUN_FINISHED
        return params

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        raise NotImplementedError("LettaChatModel reads an asyncio stream: use ainvoke/astream")

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop, **kwargs))

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        # BaseChatModel reports each chunk to the callbacks itself (that is what feeds LangGraph's stream).
        async for chunk in self.turn.message_chunks():
            yield ChatGenerationChunk(message=chunk)
