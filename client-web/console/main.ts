// The Orisun console: query, follow, append and pub/sub, on the client library in ../src.
import {
  basicAuth,
  bearer,
  Code,
  ConnectError,
  codeName,
  comparePositions,
  createOrisunClient,
  type Event,
  formatPosition,
  isConditionFailed,
  type Message,
  nextPosition,
  type Position,
  type QueryInput,
  type StreamState,
  type TagPair,
  type WhoAmIResponse,
} from "../src/index.js";
import { describeAccess, mayUseBoundary, mayUseSubject } from "./access.js";
import { describeServer, renderBoundaries, renderGroups } from "./overview.js";
import { session } from "./session.js";

function $<T extends HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (!element) throw new Error(`console markup lacks #${id}`);
  return element as T;
}

const params = new URLSearchParams(location.search);
const serverUrl = (params.get("server") ?? location.origin).replace(/\/+$/, "");
// gRPC-Web answers every call with HTTP 200 and the status in trailers, so an expected refusal
// (a failed condition, a bad boundary) does not show up as a failed request in the devtools.
// Credentials are asked for before each call, so a sign-in or sign-out applies to the next one.
let credentials = session.get();
const client = createOrisunClient({
  baseUrl: serverUrl,
  protocol: "grpc-web",
  credentials: () => credentials,
});
$("server-url").textContent = serverUrl;

// ---- form parsing: every error names the field and the rule -------------------------------

class InputError extends Error {}

function parseTags(text: string, field: string): TagPair[] {
  return text
    .split(/[\n,]/)
    .map((item) => item.trim())
    .filter((item) => item !== "")
    .map((item) => {
      const eq = item.indexOf("=");
      if (eq <= 0) throw new InputError(`${field}: "${item}" must be key=value`);
      return { key: item.slice(0, eq).trim(), value: item.slice(eq + 1).trim() };
    });
}

function parseTypes(text: string): string[] {
  return text
    .split(",")
    .map((t) => t.trim())
    .filter((t) => t !== "");
}

function parseJson(text: string, field: string, required: boolean): unknown {
  if (text.trim() === "") {
    if (required) throw new InputError(`${field}: required (any JSON value, e.g. {})`);
    return undefined;
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new InputError(`${field}: not valid JSON: ${(error as Error).message}`);
  }
}

const BOUNDARY = /^[a-z][a-z0-9_]{0,62}$/;
const boundaryInput = $<HTMLInputElement>("boundary");

function boundary(): string {
  const value = boundaryInput.value.trim();
  if (!BOUNDARY.test(value))
    throw new InputError(
      `Boundary: "${value}" must be a lowercase letter, then up to 62 of a-z 0-9 _`,
    );
  return value;
}

function describe(error: unknown): string {
  if (error instanceof InputError) return error.message;
  const e = ConnectError.from(error);
  if (e.code === Code.PermissionDenied) return `Not allowed: ${e.rawMessage}`;
  if (e.code === Code.Unauthenticated) {
    // Signed in a moment ago and refused now (revoked, deleted, changed): back to the sign-in.
    if (who) void refreshWho();
    return "Not signed in, or your credentials no longer work: sign in again.";
  }
  return `${codeName(e.code)}: ${e.rawMessage}`;
}

const storage = {
  get: (key: string) => {
    try {
      return localStorage.getItem(key);
    } catch {
      return null;
    }
  },
  set: (key: string, value: string) => {
    try {
      localStorage.setItem(key, value);
    } catch {
      // Private mode or storage disabled: the console still works, it just forgets.
    }
  },
};

boundaryInput.value = params.get("boundary") ?? storage.get("orisun.boundary") ?? "";
boundaryInput.addEventListener("change", () => {
  storage.set("orisun.boundary", boundaryInput.value.trim());
  stopFollowing();
  applyAccess();
});
boundaryInput.addEventListener("input", () => applyAccess());
$("boundary-form").addEventListener("submit", (e) => {
  e.preventDefault();
  void runQuery();
});
void fetch(`${serverUrl}/console/settings.json`)
  .then((r) => (r.ok ? (r.json() as Promise<{ boundaries: string[] | null }>) : null))
  .then((settings) => {
    const list = $("boundaries");
    for (const name of settings?.boundaries ?? []) {
      const option = document.createElement("option");
      option.value = name;
      list.append(option);
    }
    if (boundaryInput.value === "") boundaryInput.value = settings?.boundaries?.[0] ?? "default";
  })
  .catch(() => {
    if (boundaryInput.value === "") boundaryInput.value = "default";
  });

// ---- the event list ------------------------------------------------------------------------

const list = $<HTMLOListElement>("events");
const moreButton = $<HTMLButtonElement>("more");
const queryError = $("query-error");

interface Shown {
  boundary: string;
  query: QueryInput;
  direction: "forward" | "backward";
  count: number;
  next: Position | undefined;
  /**
   * The boundary's head in the snapshot the query's first page was read from: the DCB condition's
   * marker, so "append if nothing matching changed since" means since this query ran, whether or
   * not it matched anything (later pages and live events do not move it).
   */
  head: Position | undefined;
  keys: Set<string>;
}
let shown: Shown | undefined;

function readQueryForm(): Omit<Shown, "next" | "head" | "keys"> {
  const count = Number($<HTMLInputElement>("q-count").value);
  if (!Number.isInteger(count) || count < 1 || count > 10_000)
    throw new InputError("Page size: must be a whole number from 1 to 10,000");
  return {
    boundary: boundary(),
    query: {
      types: parseTypes($<HTMLInputElement>("q-types").value),
      tags: parseTags($<HTMLTextAreaElement>("q-tags").value, "Tags"),
    },
    direction: $<HTMLSelectElement>("q-direction").value === "backward" ? "backward" : "forward",
    count,
  };
}

function pretty(json: string): string {
  if (json === "") return "";
  try {
    return JSON.stringify(JSON.parse(json), null, 2);
  } catch {
    return json;
  }
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string,
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderEvent(event: Event, fresh: boolean): HTMLLIElement {
  const item = el("li", fresh ? "event fresh" : "event");
  item.dataset.position = formatPosition(event.position);
  item.dataset.type = event.eventType;
  const details = el("details", "");
  const summary = el("summary", "");
  summary.append(
    el("code", "pos", formatPosition(event.position)),
    el("span", "type", event.eventType),
  );
  const tags = el("span", "tags");
  for (const tag of event.tags) tags.append(el("span", "tag", `${tag.key}=${tag.value}`));
  summary.append(tags);
  if (event.dateCreated) {
    const date = new Date(
      Number(event.dateCreated.seconds) * 1000 + Math.floor(event.dateCreated.nanos / 1e6),
    );
    const time = el("time", "time", date.toLocaleString());
    time.dateTime = date.toISOString();
    time.title = date.toISOString();
    summary.append(time);
  }
  details.append(summary);
  const body = el("div", "body");
  body.append(el("h3", "", "Data"), el("pre", "json", pretty(event.data)));
  if (event.metadata !== "")
    body.append(el("h3", "", "Metadata"), el("pre", "json", pretty(event.metadata)));
  body.append(el("p", "muted", `id ${event.eventId}`));
  details.append(body);
  item.append(details);
  return item;
}

function addEvents(events: readonly Event[], live: boolean) {
  if (!shown) return;
  for (const event of events) {
    const key = formatPosition(event.position);
    if (shown.keys.has(key)) continue;
    shown.keys.add(key);
    const item = renderEvent(event, live);
    // Live events are the newest: at the bottom oldest-first, at the top newest-first.
    if (live && shown.direction === "backward") list.prepend(item);
    else list.append(item);
  }
  $("events-empty").hidden = shown.keys.size > 0;
  $("events-empty").textContent = "No events match.";
  $("event-count").textContent = `(${shown.keys.size.toLocaleString()} shown)`;
}

/** Where the query read: shown with the results and named by the append's condition. */
function showHead(view: Shown) {
  const at = view.head ? formatPosition(view.head) : "";
  $("query-head").hidden = view.head === undefined;
  $("head-position").textContent = at;
  $("a-after").textContent = view.head
    ? `head ${at}, where the query read`
    : "the query's read (run a query first)";
}

/** The query being run; a newer one makes an older one's answer stale. */
let pending: Shown | undefined;

/** Runs the form's query; the list changes only once the first page has arrived. */
async function runQuery() {
  queryError.textContent = "";
  try {
    const view: Shown = {
      ...readQueryForm(),
      next: undefined,
      head: undefined,
      keys: new Set(),
    };
    pending = view;
    const { events: page, head } = await readPage(view);
    if (pending !== view) return; // a newer query replaced this one meanwhile
    stopFollowing();
    shown = view;
    view.head = head;
    list.replaceChildren();
    showPage(view, page, head);
    showHead(view);
  } catch (error) {
    queryError.textContent = describe(error);
  }
}
function readPage(view: Shown): Promise<{ events: Event[]; head: Position }> {
  return client.readAt({
    boundary: view.boundary,
    query: view.query,
    direction: view.direction,
    count: view.count,
    from: view.next,
  });
}

function showPage(view: Shown, page: readonly Event[], head: Position) {
  addEvents(page, false);
  const last = page.at(-1)?.position;
  // A page shorter than asked may still not be the last (the server also stops a page at its byte
  // bound): going forward the head says whether more can follow; backward, only an empty page.
  const more =
    last !== undefined && (view.direction === "forward" ? comparePositions(last, head) < 0 : true);
  view.next = more ? nextPosition(last, view.direction) : undefined;
  moreButton.hidden = view.next === undefined;
}

$("query-form").addEventListener("submit", (e) => {
  e.preventDefault();
  void runQuery();
});
moreButton.addEventListener("click", async () => {
  if (!shown) return;
  const view = shown;
  moreButton.disabled = true;
  try {
    const { events: page, head } = await readPage(view);
    if (view === shown) showPage(view, page, head);
  } catch (error) {
    queryError.textContent = describe(error);
  } finally {
    moreButton.disabled = false;
  }
});

// ---- following live ------------------------------------------------------------------------

const followButton = $<HTMLButtonElement>("follow");
let following: AbortController | undefined;

function showState(dot: HTMLElement, label: HTMLElement, state: StreamState, what: string) {
  dot.dataset.state = state.state;
  switch (state.state) {
    case "connecting":
      label.textContent =
        state.attempt === 0 ? "Connecting…" : `Connecting (try ${state.attempt + 1})…`;
      break;
    case "live":
      label.textContent = `Live: ${what}`;
      break;
    case "reconnecting":
      label.textContent = `Connection lost (${codeName(state.error.code)}); retrying in ${(state.delayMs / 1000).toFixed(1)} s`;
      break;
    case "closed":
      label.textContent = state.error ? `Stopped: ${describe(state.error)}` : `Not ${what}`;
      dot.dataset.state = state.error ? "error" : "off";
      break;
  }
}

function stopFollowing() {
  following?.abort();
  following = undefined;
}

async function follow() {
  if (!shown) await runQuery();
  const view = shown;
  if (!view) return;
  const control = new AbortController();
  following = control;
  followButton.setAttribute("aria-pressed", "true");
  followButton.textContent = "Stop following";
  const dot = $("live-dot");
  const label = $("live-status");
  try {
    // Start after the newest matching event: what is shown already, or older, is not repeated.
    const [newest] = await client.read({
      boundary: view.boundary,
      query: view.query,
      direction: "backward",
      count: 1,
      signal: control.signal,
    });
    const events = client.subscribe({
      boundary: view.boundary,
      query: view.query,
      after: newest?.position,
      signal: control.signal,
      onState: (state) => showState(dot, label, state, "following"),
    });
    for await (const event of events) {
      if (view !== shown) break;
      addEvents([event], true);
    }
  } catch (error) {
    if (!control.signal.aborted) {
      dot.dataset.state = "error";
      label.textContent = `Stopped: ${describe(error)}`;
    }
  } finally {
    if (following === control) following = undefined;
    followButton.setAttribute("aria-pressed", "false");
    followButton.textContent = "Follow live";
  }
}

followButton.addEventListener("click", () => {
  if (following) stopFollowing();
  else void follow();
});

// ---- append --------------------------------------------------------------------------------

const dataInput = $<HTMLTextAreaElement>("a-data");
const metadataInput = $<HTMLTextAreaElement>("a-metadata");

function checkJson(input: HTMLTextAreaElement, errorId: string, field: string, required: boolean) {
  try {
    parseJson(input.value, field, required);
    input.removeAttribute("aria-invalid");
    $(errorId).textContent = "";
    return true;
  } catch (error) {
    input.setAttribute("aria-invalid", "true");
    $(errorId).textContent = (error as Error).message;
    return false;
  }
}
dataInput.addEventListener("input", () => checkJson(dataInput, "a-data-error", "Data", true));
metadataInput.addEventListener("input", () =>
  checkJson(metadataInput, "a-metadata-error", "Metadata", false),
);

/** On submit, runs `action`: what it answers goes to `resultId`, what it throws to `errorId`. */
function formAction(
  formId: string,
  resultId: string,
  errorId: string,
  action: () => Promise<string>,
  explain: (error: unknown) => string = describe,
) {
  $(formId).addEventListener("submit", async (e) => {
    e.preventDefault();
    const result = $(resultId);
    const failure = $(errorId);
    result.textContent = "";
    failure.textContent = "";
    try {
      result.textContent = await action();
    } catch (error) {
      failure.textContent = explain(error);
    }
  });
}

formAction(
  "append-form",
  "append-result",
  "append-error",
  async () => {
    const type = $<HTMLInputElement>("a-type").value.trim();
    if (type === "") throw new InputError("Event type: required");
    const dataOk = checkJson(dataInput, "a-data-error", "Data", true);
    const metadataOk = checkJson(metadataInput, "a-metadata-error", "Metadata", false);
    if (!dataOk || !metadataOk) {
      (dataOk ? metadataInput : dataInput).focus();
      throw new InputError("Fix the JSON above first");
    }
    const conditional = $<HTMLInputElement>("a-condition").checked;
    if (conditional && !shown)
      throw new InputError("Condition: run a query first; the condition uses it");
    const id = $<HTMLInputElement>("a-id").value.trim();
    const position = await client.save(
      [
        {
          id: id === "" ? undefined : id,
          type,
          tags: parseTags($<HTMLTextAreaElement>("a-tags").value, "Tags"),
          data: parseJson(dataInput.value, "Data", true),
          metadata: parseJson(metadataInput.value, "Metadata", false),
        },
      ],
      {
        boundary: conditional && shown ? shown.boundary : boundary(),
        condition: conditional && shown ? { query: shown.query, after: shown.head } : undefined,
      },
    );
    void refreshOverview();
    return `Appended ${type} at position ${formatPosition(position)}`;
  },
  (error) =>
    isConditionFailed(error)
      ? `Conflict: an event matching the query was appended after head ${formatPosition(shown?.head)}, where the query read. Nothing was written; run the query again and decide anew. (${describe(error)})`
      : describe(error),
);

// ---- pub/sub -------------------------------------------------------------------------------

formAction("publish-form", "publish-result", "publish-error", async () => {
  const subject = $<HTMLInputElement>("p-subject").value.trim();
  if (subject === "") throw new InputError("Subject: required");
  await client.publish(subject, $<HTMLTextAreaElement>("p-message").value);
  return `Published to ${subject}`;
});

const watchButton = $<HTMLButtonElement>("watch");
const messages = $<HTMLOListElement>("messages");
let watching: AbortController | undefined;
const decoder = new TextDecoder();

function renderMessage(message: Message): HTMLLIElement {
  const item = el("li", "message fresh");
  item.dataset.subject = message.subject;
  const head = el("div", "head");
  head.append(el("code", "subject", message.subject), el("span", "muted", message.id));
  item.append(head, el("pre", "json", pretty(decoder.decode(message.data))));
  return item;
}

$("watch-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (watching) {
    watching.abort();
    return;
  }
  const subject = $<HTMLInputElement>("w-subject").value.trim();
  const group = $<HTMLInputElement>("w-group").value.trim();
  const control = new AbortController();
  watching = control;
  watchButton.setAttribute("aria-pressed", "true");
  watchButton.textContent = "Stop watching";
  $("watch-error").textContent = "";
  const dot = $("watch-dot");
  const label = $("watch-status");
  try {
    if (subject === "") throw new InputError("Watch subject: required");
    for await (const message of client.subscribePubSub(subject, {
      group: group === "" ? undefined : group,
      signal: control.signal,
      onState: (state) => showState(dot, label, state, "watching"),
    })) {
      messages.prepend(renderMessage(message));
      while (messages.children.length > 200) messages.lastElementChild?.remove();
    }
  } catch (error) {
    $("watch-error").textContent = describe(error);
  } finally {
    watching = undefined;
    watchButton.setAttribute("aria-pressed", "false");
    watchButton.textContent = "Watch";
  }
});

// ---- who is signed in, and what they may do ------------------------------------------------

let who: WhoAmIResponse | undefined;
const signInPanel = $("signin-panel");
const layout = $("layout");

/** Greys out (aria-disabled, still clickable: the server decides) what the grants do not allow. */
function gate(button: HTMLElement, noteId: string, allowed: boolean, reason: string) {
  if (allowed) button.removeAttribute("aria-disabled");
  else button.setAttribute("aria-disabled", "true");
  button.title = allowed ? "" : reason;
  $(noteId).textContent = allowed ? "" : reason;
}

function applyAccess() {
  const b = boundaryInput.value.trim();
  const read = mayUseBoundary(who, "read", b);
  const reason = (access: string, what: string) =>
    `Your permissions (${who ? describeAccess(who) : ""}) do not include ${access} on ${what}.`;
  gate($("run-query"), "query-access", read, reason("read", `boundary ${b}`));
  gate(followButton, "query-access", read, reason("read", `boundary ${b}`));
  gate(
    $("append-submit"),
    "append-access",
    mayUseBoundary(who, "append", b),
    reason("append", `boundary ${b}`),
  );
  const publishSubject = $<HTMLInputElement>("p-subject").value.trim();
  gate(
    $("publish-submit"),
    "publish-access",
    publishSubject === "" || mayUseSubject(who, "publish", publishSubject),
    reason("publish", `subject ${publishSubject}`),
  );
  const watchSubject = $<HTMLInputElement>("w-subject").value.trim();
  gate(
    watchButton,
    "watch-access",
    watchSubject === "" || mayUseSubject(who, "subscribe", watchSubject),
    reason("subscribe", `subject ${watchSubject}`),
  );
}
for (const id of ["p-subject", "w-subject"]) $(id).addEventListener("input", () => applyAccess());

function showWho() {
  const label = $("who-label");
  const signOut = $("sign-out");
  if (!who) {
    label.textContent = "Not signed in";
    signOut.hidden = true;
    return;
  }
  if (!who.authEnabled) {
    label.textContent = "Authentication is off: every call is allowed";
    signOut.hidden = true;
    return;
  }
  const name = who.apiKeyId ? `${who.user} (API key ${who.apiKeyId})` : who.user;
  label.textContent = `Signed in as ${name} · ${describeAccess(who)}`;
  signOut.hidden = false;
}

/** Asks the server who the credentials belong to; without valid ones, offers the sign-in. */
async function refreshWho(): Promise<void> {
  // A sign-in or sign-out while this call was out makes its answer stale.
  const asked = credentials;
  try {
    const answer = await client.admin.whoAmI({});
    if (credentials !== asked) return;
    who = answer;
    signInPanel.hidden = true;
    layout.hidden = false;
    overviewPanel.hidden = false;
  } catch (error) {
    if (credentials !== asked) return;
    who = undefined;
    const e = ConnectError.from(error);
    if (e.code === Code.Unauthenticated) {
      credentials = undefined;
      session.clear();
      stopFollowing();
      watching?.abort();
      signInPanel.hidden = false;
      layout.hidden = true;
      overviewPanel.hidden = true;
      showWho();
      $<HTMLInputElement>("s-user").focus();
      return;
    } else {
      $("who-label").textContent = `Cannot reach the server: ${codeName(e.code)}: ${e.rawMessage}`;
      return;
    }
  }
  showWho();
  applyAccess();
  void refreshOverview();
}

for (const radio of document.querySelectorAll<HTMLInputElement>("input[name=s-method]")) {
  radio.addEventListener("change", () => {
    const key = radio.value === "key" && radio.checked;
    $("signin-password").hidden = key;
    $("signin-key").hidden = !key;
  });
}

$("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const error = $("signin-error");
  error.textContent = "";
  const byKey = $<HTMLInputElement>("s-method-key").checked;
  const user = $<HTMLInputElement>("s-user").value.trim();
  const password = $<HTMLInputElement>("s-password").value;
  const key = $<HTMLInputElement>("s-key").value.trim();
  if (byKey ? key === "" : user === "" || password === "") {
    error.textContent = byKey ? "API key: required" : "User and password: both required";
    return;
  }
  const candidate = byKey ? bearer(key) : basicAuth(user, password);
  credentials = candidate;
  try {
    who = await client.admin.whoAmI({});
  } catch (failure) {
    credentials = undefined;
    const code = ConnectError.from(failure).code;
    error.textContent =
      code === Code.Unauthenticated
        ? "Sign-in failed: the user name and password, or the API key, are not valid."
        : code === Code.ResourceExhausted
          ? "Too many failed attempts: wait a minute, then try again."
          : `Sign-in failed: ${describe(failure)}`;
    return;
  }
  session.set(candidate);
  $<HTMLInputElement>("s-password").value = "";
  $<HTMLInputElement>("s-key").value = "";
  await refreshWho();
});

$("sign-out").addEventListener("click", () => {
  credentials = undefined;
  session.clear();
  void refreshWho();
});

// ---- overview ------------------------------------------------------------------------------

const overviewPanel = $("overview-panel");

function browse(name: string) {
  boundaryInput.value = name;
  storage.set("orisun.boundary", name);
  stopFollowing();
  applyAccess();
  void runQuery();
}

async function refreshOverview(): Promise<void> {
  const error = $("overview-error");
  const tables = $("overview-tables");
  if (who?.authEnabled && !who.admin) {
    $("server-info").textContent = "";
    tables.hidden = true;
    error.textContent = "";
    $("overview-note").textContent =
      `The overview of boundaries and groups needs the admin role. You may: ${describeAccess(who)}.`;
    return;
  }
  $("overview-note").textContent = "";
  try {
    const [info, boundaries, groups] = await Promise.all([
      client.admin.getServerInfo({}),
      client.admin.listBoundaries({}),
      client.admin.listGroups({}),
    ]);
    $("server-info").textContent = describeServer(info);
    renderBoundaries($<HTMLTableSectionElement>("boundaries-body"), boundaries, browse);
    renderGroups($<HTMLTableSectionElement>("groups-body"), groups);
    $("boundaries-empty").hidden = boundaries.boundaries.length > 0;
    $("groups-empty").hidden = groups.groups.length > 0;
    tables.hidden = false;
    error.textContent = "";
  } catch (failure) {
    error.textContent = describe(failure);
  }
}

$("overview-refresh").addEventListener("click", () => void refreshOverview());
// Boundaries made meanwhile (by curl, another tab, an app) show up without a reload.
setInterval(() => {
  if (document.visibilityState === "visible" && !overviewPanel.hidden) void refreshOverview();
}, 5_000);

void refreshWho();
