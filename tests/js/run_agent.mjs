// Drives one AG-UI endpoint with the official @ag-ui/client (pinned in package.json) and reports
// what the client saw. Python tests call it through tests/agui_js.py; the scenario and result
// formats are documented there.
//
// stdin:  one JSON scenario {url, headers?, threadId?, tools?, forwardedProps?, messages?, state?, steps}
// stdout: one JSON result   {runs, messages, state, warnings, errors}
//
// Nothing but the result may reach stdout, so every console method is redirected before the
// client is imported (some of its warnings fire at module load or first use).

import { format } from "node:util";

const warnings = [];
const errors = [];

// Errors are rendered as "Name: message" (no stack) so assertions and reports stay readable.
function render(args) {
  return format(
    ...args.map((arg) => (arg instanceof Error ? `${arg.name}: ${arg.message}` : arg)),
  );
}

for (const [method, sink] of [
  ["warn", warnings],
  ["error", errors],
  ["log", null],
  ["info", null],
  ["debug", null],
]) {
  console[method] = (...args) => {
    const line = render(args);
    if (sink) sink.push(line);
    // Mirrored to stderr so a failing test's captured stderr shows the client's own words.
    process.stderr.write(`[console.${method}] ${line}\n`);
  };
}

const { HttpAgent, randomUUID } = await import("@ag-ui/client");

const readStdin = async () => {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
};

const clone = (value) => (value === undefined ? undefined : JSON.parse(JSON.stringify(value)));

const errorMessage = (error) =>
  error instanceof Error ? error.message || error.name : String(error);

/**
 * Splits an SSE body into the JSON payloads of its `data:` fields, per the SSE rules the client
 * follows (blank line ends an event, multi-line data joined with "\n", other fields ignored).
 * Used only for `wireEvents`: the exact bytes the server sent, before the client's
 * compatibility layer, zod parsing and chunk expansion touched them.
 */
function parseSse(text) {
  const events = [];
  for (const block of text.replace(/\r\n?/g, "\n").split("\n\n")) {
    const data = block
      .split("\n")
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).replace(/^ /, ""));
    if (data.length === 0) continue;
    const payload = data.join("\n");
    try {
      events.push(JSON.parse(payload));
    } catch {
      events.push({ _unparsed: payload });
    }
  }
  return events;
}

/**
 * A fetch that records the request body and a copy of the response body. The response is
 * tee'd, so the client reads its branch exactly as it would read the original.
 */
function recordingFetch() {
  let current = null;
  const fetchFn = async (url, init) => {
    const record = { input: null, status: null, contentType: null, body: "", done: null, reader: null };
    current = record;
    try {
      record.input = JSON.parse(init.body);
    } catch {
      record.input = init.body ?? null;
    }
    const response = await fetch(url, init);
    record.status = response.status;
    record.contentType = response.headers.get("content-type");
    if (!response.ok || !response.body) {
      record.done = Promise.resolve();
      return response;
    }
    const [forClient, forRecord] = response.body.tee();
    const reader = forRecord.getReader();
    record.reader = reader;
    const decoder = new TextDecoder();
    record.done = (async () => {
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          record.body += decoder.decode(value, { stream: true });
        }
      } catch {
        // Aborted or cancelled: keep what arrived.
      }
    })();
    return new Response(forClient, {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  };
  return {
    fetchFn,
    // Called after each run settles. A failed run may leave the server still streaming (the
    // client stops reading), so the copy gets a short grace period and is then cut off.
    async take(runFailed) {
      const record = current;
      current = null;
      if (!record) return null;
      if (record.done) {
        const grace = runFailed ? 500 : 10_000;
        let timer;
        await Promise.race([
          record.done,
          new Promise((resolve) => (timer = setTimeout(resolve, grace))),
        ]);
        clearTimeout(timer);
        record.reader?.cancel().catch(() => {});
      }
      return record;
    },
  };
}

// Tool calls left for the application when RUN_FINISHED never came: started minus answered,
// the same derivation the client applies when an outcome names none.
function derivePendingToolCalls(events) {
  const started = [];
  const answered = new Set();
  for (const event of events) {
    if (event.type === "TOOL_CALL_START") started.push(event.toolCallId);
    if (event.type === "TOOL_CALL_RESULT") answered.add(event.toolCallId);
  }
  return started.filter((id) => !answered.has(id));
}

function toolNameOf(messages, toolCallId) {
  for (const message of messages) {
    for (const call of message.toolCalls ?? []) {
      if (call.id === toolCallId) return call.function?.name;
    }
  }
  return undefined;
}

const asContent = (value) => (typeof value === "string" ? value : JSON.stringify(value));

async function main() {
  const scenario = JSON.parse(await readStdin());
  const recorder = recordingFetch();
  const agent = new HttpAgent({
    url: scenario.url,
    headers: scenario.headers ?? {},
    ...(scenario.threadId ? { threadId: scenario.threadId } : {}),
    initialMessages: scenario.messages ?? [],
    initialState: scenario.state ?? {},
    fetch: recorder.fetchFn,
  });

  const runs = [];
  let pendingToolCallIds = [];

  // One runAgent call, recorded. Returns false when the run failed, which ends the scenario.
  const run = async (step, extra = {}) => {
    const record = {
      op: step.op,
      events: [],
      error: null,
      outcome: null,
      pendingToolCallIds: [],
      pendingInterrupts: [],
    };
    let finished = null;
    if (step.state !== undefined) agent.setState(step.state); // the client edits the shared state
    const subscriber = {
      // onEvent sees every event that passed the client's pipeline (compatibility layer, zod
      // enforcement, chunk expansion, verifyEvents), in order.
      onEvent: ({ event }) => {
        record.events.push(clone(event));
      },
      // The client hands RUN_FINISHED's outcome here, with pendingToolCallIds already resolved
      // (the producer's list, or derived from the stream when it named none).
      onRunFinishedEvent: (params) => {
        finished = params;
      },
    };
    try {
      await agent.runAgent(
        {
          tools: step.tools ?? scenario.tools ?? [],
          forwardedProps: step.forwardedProps ?? scenario.forwardedProps ?? {},
          ...extra,
        },
        subscriber,
      );
    } catch (error) {
      record.error = errorMessage(error);
    }
    const wire = await recorder.take(record.error !== null);
    if (finished) {
      record.outcome = finished.outcome;
      if (finished.outcome === "success") record.pendingToolCallIds = [...finished.pendingToolCallIds];
    } else {
      record.pendingToolCallIds = derivePendingToolCalls(record.events);
    }
    record.pendingInterrupts = clone(agent.pendingInterrupts);
    if (wire) {
      record.input = wire.input;
      record.http = { status: wire.status, contentType: wire.contentType };
      record.wireEvents = parseSse(wire.body);
    }
    runs.push(record);
    pendingToolCallIds = record.pendingToolCallIds;
    return record.error === null;
  };

  // A step the harness cannot perform is reported like a failed run, so client_errors() shows it.
  const refuse = (step, message) => {
    runs.push({
      op: step.op,
      events: [],
      error: `harness: ${message}`,
      outcome: null,
      pendingToolCallIds: [],
      pendingInterrupts: clone(agent.pendingInterrupts),
    });
    return false;
  };

  for (const step of scenario.steps ?? []) {
    let ok;
    switch (step.op) {
      case "user":
        agent.addMessage({ id: step.id ?? randomUUID(), role: "user", content: step.content });
        ok = await run(step);
        break;

      case "tool_results": {
        if (pendingToolCallIds.length === 0) {
          ok = refuse(step, "tool_results step, but the previous run left no pending tool calls");
          break;
        }
        const results = step.results ?? {};
        for (const toolCallId of pendingToolCallIds) {
          const name = toolNameOf(agent.messages, toolCallId);
          const value = name !== undefined && name in results ? results[name] : results["*"];
          if (value === undefined) {
            ok = refuse(step, `no result for tool call ${toolCallId} (${name ?? "unknown tool"})`);
            break;
          }
          // `error` is one string for every result, or a map by tool name.
          const error = typeof step.error === "string" ? step.error : step.error?.[name];
          agent.addMessage({
            id: `tool-result-${toolCallId}`,
            role: "tool",
            toolCallId,
            content: asContent(value),
            ...(error !== undefined ? { error } : {}),
          });
        }
        if (ok === false) break;
        ok = await run(step);
        break;
      }

      case "resume": {
        if (agent.pendingInterrupts.length === 0) {
          ok = refuse(step, "resume step, but the agent has no pending interrupts");
          break;
        }
        if (step.decision !== "approve" && step.decision !== "reject") {
          const got = JSON.stringify(step.decision);
          ok = refuse(step, `resume decision must be "approve" or "reject", got ${got}`);
          break;
        }
        const status = step.decision === "approve" ? "resolved" : "cancelled";
        const resume = agent.pendingInterrupts.map((interrupt) => ({
          interruptId: interrupt.id,
          status,
          ...(step.payload !== undefined ? { payload: step.payload } : {}),
        }));
        ok = await run(step, { resume });
        break;
      }

      case "run":
        ok = await run(step);
        break;

      default:
        ok = refuse(step, `unknown step op ${JSON.stringify(step.op)}`);
    }
    if (!ok) break; // A failed run makes the rest of the conversation meaningless.
  }

  return { runs, messages: clone(agent.messages), state: clone(agent.state), warnings, errors };
}

let output;
try {
  output = await main();
} catch (error) {
  // Only a harness bug or an unreadable scenario gets here; runAgent failures are caught per run.
  process.stderr.write(`${error?.stack ?? error}\n`);
  process.exitCode = 2;
}
if (output) {
  // Exit from the write callback: pooled keep-alive sockets must not hold the process open.
  process.stdout.write(`${JSON.stringify(output)}\n`, () => process.exit(0));
}
