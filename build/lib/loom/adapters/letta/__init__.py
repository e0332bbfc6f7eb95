"""Letta at the edge: letta-client streaming -> LangChain messages and events.

- `client`: AsyncLetta per event loop, conversations, sending a turn exactly once (otid + verified retries);
- `stream`: a live Letta turn read one assistant message at a time (`LettaTurn`), every message type mapped;
- `chat_model`: `LettaChatModel`, the chat-model view of a live turn (what feeds LangGraph's messages stream);
- `errors`: specific failures, each with the RUN_ERROR code a client sees;
- `memory`: `LettaMemoryBackend`, per-user memories in a Letta agent's archival memory.
"""
