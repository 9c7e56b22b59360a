"use strict";
// The aligngym trajectory report. Every string of a row is model-written: it reaches the page through
// textContent (never innerHTML, never an attribute, href or class name), so it shows as text, literally.
(function () {
  const DATA = JSON.parse(document.getElementById("aligngym-data").textContent);
  const COMPARE = DATA.mode === "compare";
  const SIDES = COMPARE ? ["A", "B"] : [""];
  const ROLE_CLASS = { system: "role-system", user: "role-user", assistant: "role-assistant", tool: "role-tool" };
  // Row fields shown in the seat's own view; the rest go under "other fields".
  const SHOWN = new Set(["messages", "rewards", "reward", "reward_components", "error", "success", "info",
    "agent_id", "agent", "env_id", "seed", "episode", "episode_id", "turns", "terminated", "truncated"]);
  const $ = (id) => document.getElementById(id);
  const state = { env: "", min: null, max: null, outcome: "all", match: "all", sort: "order", page: 0 };
  let view = [];

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function fmt(x) {
    if (typeof x !== "number") return "n/a";
    if (Number.isInteger(x)) return String(x);
    const s = x.toFixed(4).replace(/\.?0+$/, "");
    return s === "-0" ? "0" : s;
  }

  function badge(text, kind) {
    return el("span", "badge" + (kind ? " " + kind : ""), text);
  }

  function textOf(content) {
    if (content === null || content === undefined) return "";
    if (typeof content === "string") return content;
    if (Array.isArray(content)) {
      return content.map((p) => (p && typeof p.text === "string" ? p.text : JSON.stringify(p))).join("\n");
    }
    return JSON.stringify(content, null, 2);
  }

  function prettyArgs(args) {
    if (typeof args === "string") {
      try { return JSON.stringify(JSON.parse(args), null, 2); } catch (e) { return args; }
    }
    return args === undefined ? "" : JSON.stringify(args, null, 2);
  }

  function isObject(x) {
    return x !== null && typeof x === "object" && !Array.isArray(x);
  }

  function toolCallNode(call) {
    const fn = isObject(call) && isObject(call.function) ? call.function : {};
    const node = el("div", "tool-call");
    const head = el("div", "msg-head");
    head.append(el("span", "call-label", "tool call"), el("span", "tool-name", fn.name === undefined ? "?" : fn.name));
    if (isObject(call) && call.id !== undefined) head.append(el("span", "call-id", "id " + call.id));
    node.append(head, el("pre", "args", prettyArgs(fn.arguments)));
    return node;
  }

  // One chat message; an assistant message is a turn and carries that turn's reward.
  function messageNode(raw, turn, rewards) {
    const msg = isObject(raw) ? raw : { role: "?", content: raw };
    const role = typeof msg.role === "string" ? msg.role : "?";
    const node = el("div", "msg " + (ROLE_CLASS[role] || "role-other"));
    const head = el("div", "msg-head");
    head.append(el("span", "role", role));
    if (role === "tool") {
      if (msg.name !== undefined) head.append(el("span", "tool-name", msg.name));
      if (msg.tool_call_id !== undefined) head.append(el("span", "call-id", "result of " + msg.tool_call_id));
    }
    if (turn !== null) {
      head.append(el("span", "turn", "turn " + (turn + 1)));
      if (turn < rewards.length) head.append(el("span", "turn-reward", "reward " + fmt(rewards[turn])));
    }
    node.append(head);
    const text = textOf(msg.content);
    if (text) node.append(el("div", "content", text));
    if (Array.isArray(msg.tool_calls)) msg.tool_calls.forEach((c) => node.append(toolCallNode(c)));
    return node;
  }

  function componentsNode(comps) {
    const table = el("table", "components");
    const head = el("tr");
    const values = el("tr");
    for (const [name, value] of Object.entries(comps)) {
      head.append(el("th", null, name));
      values.append(el("td", null, fmt(value)));
    }
    table.append(head, values);
    return table;
  }

  // Built on first open: 50 episodes of info objects would be DOM nobody reads.
  function lazyDetails(label, build) {
    const details = el("details");
    details.append(el("summary", null, label));
    details.addEventListener("toggle", () => {
      if (details.open && details.childNodes.length === 1) details.append(el("pre", null, build()));
    });
    return details;
  }

  function seatNode(row, seat, side) {
    if (!row) {
      return el("div", "seat missing", "no matching episode in run " + side + (seat === null ? "" : " for " + seat));
    }
    const node = el("div", "seat" + (row.error ? " has-error" : ""));
    node.dataset.reward = String(row.reward);
    const head = el("div", "seat-head");
    if (side) head.append(el("span", "side-label", side));
    if (row.agent_id !== null && row.agent_id !== undefined) head.append(el("span", "seat-name", row.agent_id));
    head.append(el("span", "seat-reward", "reward " + fmt(row.reward)));
    if (row.success === true) head.append(badge("success", "ok"));
    if (row.success === false) head.append(badge("no success", "warn"));
    if (row.error) head.append(badge("error", "bad"));
    if (row.truncated) head.append(badge("truncated"));
    head.append(el("span", "muted", "episode " + row.episode + " · " + (row.turns === undefined ? "?" : row.turns) + " turns"));
    if (row.agent !== undefined && row.agent !== null) head.append(el("span", "muted", "agent " + row.agent));
    node.append(head);
    if (row.error) node.append(el("div", "error", "error: " + row.error));
    if (isObject(row.reward_components) && Object.keys(row.reward_components).length) {
      node.append(el("div", "muted", "components (final turn)"), componentsNode(row.reward_components));
    }
    const rewards = Array.isArray(row.rewards) ? row.rewards : [];
    if (rewards.length) node.append(el("div", "turn-rewards", "per turn: " + rewards.map(fmt).join(", ")));
    let turn = 0;
    for (const msg of Array.isArray(row.messages) ? row.messages : []) {
      const isTurn = isObject(msg) && msg.role === "assistant";
      node.append(messageNode(msg, isTurn ? turn : null, rewards));
      if (isTurn) turn += 1;
    }
    if (isObject(row.info) && Object.keys(row.info).length) {
      node.append(lazyDetails("info", () => JSON.stringify(row.info, null, 2)));
    }
    const other = Object.fromEntries(Object.entries(row).filter(([k]) => !SHOWN.has(k)));
    node.append(lazyDetails("other fields", () => JSON.stringify(other, null, 2)));
    return node;
  }

  function seatsGrid(columns) {
    const grid = el("div", "seats");
    grid.style.gridTemplateColumns = "repeat(" + columns + ", minmax(0, 1fr))";  // CSSOM: allowed by the CSP
    return grid;
  }

  function itemNode(index, position) {
    const item = DATA.items[index];
    const node = el("article", "episode" + (item.error.some(Boolean) ? " has-error" : ""));
    node.dataset.item = String(index);
    const head = el("div", "ep-head");
    head.append(el("span", "num", "#" + (position + 1)), el("span", "env", item.env), el("span", null, "seed " + item.seed));
    if (item.sample !== null && item.sample !== undefined) head.append(el("span", null, "sample " + item.sample));
    if (item.repeat) head.append(el("span", null, "play " + (item.repeat + 1) + " of this seed"));
    if (!COMPARE && item.episode_id) head.append(el("span", "muted", "id " + item.episode_id));
    if (item.seats.length > 1) head.append(el("span", "muted", item.seats.length + " seats"));
    if (COMPARE) {
      const labels = { both: ["matched", "ok"], a: ["only in A", "warn"], b: ["only in B", "warn"], partial: ["some seats unmatched", "warn"] };
      const [text, kind] = labels[item.match];
      head.append(badge(text, kind), el("span", null, "reward A " + fmt(item.reward[0]) + " · B " + fmt(item.reward[1])));
    } else {
      head.append(el("span", null, (item.seats.length > 1 ? "mean reward " : "reward ") + fmt(item.reward[0])));
    }
    node.append(head);
    if (COMPARE) {
      // One row per seat, run A left and run B right.
      for (const seat of item.seats) {
        const grid = seatsGrid(2);
        seat.rows.forEach((row, i) => grid.append(seatNode(row, seat.seat, SIDES[i])));
        node.append(grid);
      }
    } else {
      // One column per seat.
      const grid = seatsGrid(item.seats.length);
      item.seats.forEach((seat) => grid.append(seatNode(seat.rows[0], seat.seat, "")));
      node.append(grid);
    }
    return node;
  }

  function inRange(r) {
    return r !== null && (state.min === null || r >= state.min) && (state.max === null || r <= state.max);
  }

  function keep(item) {
    if (state.env && item.env !== state.env) return false;
    if ((state.min !== null || state.max !== null) && !item.reward.some(inRange)) return false;
    if (state.outcome === "error" && !item.error.some(Boolean)) return false;
    if (state.outcome === "clean" && item.error.some(Boolean)) return false;
    if (state.outcome === "success" && !item.success.some((s) => s === true)) return false;
    if (state.outcome === "failure" && !item.success.some((s) => s === false)) return false;
    if (state.match === "both" && item.match !== "both") return false;
    if (state.match === "unmatched" && item.match === "both") return false;
    return true;
  }

  function sortKey(item) {
    if (state.sort.startsWith("diff")) {
      const [a, b] = item.reward;
      return a === null || b === null ? null : b - a;
    }
    return item.reward[0] !== null ? item.reward[0] : item.reward[1];
  }

  function refresh() {
    const indices = [];
    DATA.items.forEach((item, i) => { if (keep(item)) indices.push(i); });
    if (state.sort !== "order") {
      const sign = state.sort.endsWith("desc") ? -1 : 1;
      const keys = new Map(indices.map((i) => [i, sortKey(DATA.items[i])]));
      // Items without a reward go last either way; ties keep file order.
      indices.sort((i, j) => {
        const a = keys.get(i), b = keys.get(j);
        if (a === null || a === undefined) return b === null || b === undefined ? i - j : 1;
        if (b === null || b === undefined) return -1;
        return a === b ? i - j : sign * (a - b);
      });
    }
    view = indices;
    const pages = Math.max(1, Math.ceil(view.length / DATA.page_size));
    state.page = Math.min(Math.max(state.page, 0), pages - 1);
    render(pages);
  }

  function render(pages) {
    const start = state.page * DATA.page_size;
    const shown = view.slice(start, start + DATA.page_size);
    const main = $("episodes");
    main.replaceChildren(...shown.map((i, k) => itemNode(i, start + k)));
    if (!shown.length) main.append(el("p", "empty", "No episode matches the filters."));
    $("pageinfo").textContent = "page " + (state.page + 1) + " of " + pages;
    $("count").textContent = view.length + " of " + DATA.items.length + (COMPARE ? " pairs" : " episodes") +
      (shown.length ? " (showing " + (start + 1) + "–" + (start + shown.length) + ")" : "");
    $("first").disabled = $("prev").disabled = state.page === 0;
    $("next").disabled = $("last").disabled = state.page >= pages - 1;
  }

  function summaryNode() {
    const table = el("table");
    const head = el("tr");
    ["file", "env", "rows", "mean reward", "errors", "success rate"].forEach((h) => head.append(el("th", null, h)));
    table.append(head);
    DATA.summary.forEach((file, f) => {
      for (const env of file.envs) {
        const tr = el("tr");
        const rate = env.success_rate === null ? "n/a" : (100 * env.success_rate).toFixed(1) + " %";
        [(COMPARE ? SIDES[f] + ": " : "") + file.file, env.env, env.rows, fmt(env.mean_reward), env.errors, rate]
          .forEach((v) => tr.append(el("td", null, v)));
        table.append(tr);
      }
    });
    return table;
  }

  function numberOrNull(value) {
    return value.trim() === "" || !Number.isFinite(Number(value)) ? null : Number(value);
  }

  function setup() {
    const title = COMPARE ? "A: " + DATA.files[0] + "  vs  B: " + DATA.files[1] : DATA.files[0];
    $("title").textContent = "aligngym trajectories — " + title;
    document.title = "aligngym — " + title;
    $("summary").append(summaryNode());
    [...new Set(DATA.items.map((item) => item.env))].sort().forEach((env) => $("env").append(new Option(env, env)));
    if (COMPARE) {
      $("match-label").hidden = false;
      $("sort").append(new Option("B − A, high first", "diff-desc"), new Option("B − A, low first", "diff-asc"));
      $("hint").textContent = "Pairs: same env, seed, seat and sample in A and B. The reward and outcome " +
        "filters keep a pair when either side matches; 'reward' sorts by A (B when A is missing).";
    } else if (DATA.items.some((item) => item.seats.length > 1)) {
      $("hint").textContent = "Multi-agent episodes: one column per seat; their reward is the mean over seats.";
    }
    const onChange = () => {
      state.env = $("env").value;
      state.min = numberOrNull($("rmin").value);
      state.max = numberOrNull($("rmax").value);
      state.outcome = $("outcome").value;
      state.match = $("match").value;
      state.sort = $("sort").value;
      state.page = 0;
      refresh();
    };
    $("controls").addEventListener("input", onChange);  // fires for selects too, once per edit
    $("controls").addEventListener("submit", (e) => e.preventDefault());
    const go = (page) => () => { state.page = page(); refresh(); window.scrollTo(0, 0); };
    $("first").addEventListener("click", go(() => 0));
    $("prev").addEventListener("click", go(() => state.page - 1));
    $("next").addEventListener("click", go(() => state.page + 1));
    $("last").addEventListener("click", go(() => Number.MAX_SAFE_INTEGER));
    refresh();
  }

  setup();
})();
