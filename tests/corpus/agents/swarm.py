"""A langgraph-swarm of two agents handing off to each other, as its README builds one."""

from langchain_openai import ChatOpenAI
from langgraph.prebuilt import create_react_agent
from langgraph_swarm import create_handoff_tool, create_swarm

from agents.tools import add

model = ChatOpenAI(model="gpt-4o-mini")

alice = create_react_agent(model, [add, create_handoff_tool(agent_name="Bob")],
                           prompt="You are Alice, an addition expert.", name="Alice")
bob = create_react_agent(model, [create_handoff_tool(agent_name="Alice", description="Transfer to Alice, she can "
                                                     "help with math")],
                         prompt="You are Bob, you speak like a pirate.", name="Bob")

app = create_swarm([alice, bob], default_active_agent="Alice").compile()
