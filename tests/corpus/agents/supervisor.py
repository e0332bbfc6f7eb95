"""A langgraph-supervisor team, as its README builds one."""

from langchain_openai import ChatOpenAI
from langgraph.prebuilt import create_react_agent
from langgraph_supervisor import create_supervisor

from agents.tools import add, get_weather

model = ChatOpenAI(model="gpt-4o-mini")

math_agent = create_react_agent(model=model, tools=[add], name="math_expert", prompt="You are a math expert.")
research_agent = create_react_agent(model=model, tools=[get_weather], name="research_expert",
                                    prompt="You are a world class researcher.")

workflow = create_supervisor([research_agent, math_agent], model=model,
                             prompt="You manage a research expert and a math expert.")
app = workflow.compile()
