// The overview: server info, boundaries with their counts and heads, pub/sub groups.
import {
  formatPosition,
  type ListBoundariesResponse,
  type ListGroupsResponse,
  type ServerInfo,
} from "../src/index.js";

function cell(text: string, className = ""): HTMLTableCellElement {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

export function describeServer(info: ServerInfo): string {
  const store = info.store === "pglite" ? "embedded PostgreSQL (PGlite)" : "PostgreSQL";
  const broker = info.broker === "jetstream" ? "NATS JetStream" : "in-process broker";
  const auth = info.authEnabled ? "authentication on" : "authentication off";
  return `Orisun ${info.version} · ${store} · ${broker} · ${auth}`;
}

/** One row per boundary; choosing a name browses it. */
export function renderBoundaries(
  body: HTMLTableSectionElement,
  response: ListBoundariesResponse,
  choose: (name: string) => void,
): void {
  body.replaceChildren(
    ...response.boundaries.map((b) => {
      const row = document.createElement("tr");
      row.dataset.boundary = b.name;
      const name = document.createElement("td");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "link";
      button.textContent = b.name;
      button.addEventListener("click", () => choose(b.name));
      name.append(button);
      const created = b.createdAt
        ? new Date(Number(b.createdAt.seconds) * 1000).toLocaleString()
        : "";
      row.append(
        name,
        cell(b.eventCount.toLocaleString(), "num"),
        cell(formatPosition(b.head), "pos"),
        cell(created),
      );
      return row;
    }),
  );
}

export function renderGroups(body: HTMLTableSectionElement, response: ListGroupsResponse): void {
  body.replaceChildren(
    ...response.groups.map((g) => {
      const row = document.createElement("tr");
      row.dataset.group = g.consumerName;
      row.append(
        cell(g.consumerName),
        cell(g.subject, "pos"),
        cell(g.pending.toLocaleString(), "num"),
        cell(g.unacknowledged.toLocaleString(), "num"),
      );
      return row;
    }),
  );
}
