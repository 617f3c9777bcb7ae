import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { startOwnNatsServer } from "./support/nats-server.js";
import { freePort } from "./support/spawn-server.js";

interface Service {
  image?: string;
  build?: string;
  restart?: string;
  command?: string[];
  ports?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  healthcheck?: { test: string[]; interval: string; timeout: string; retries: number };
  depends_on?: Record<string, { condition: string }>;
}

const compose = parse(readFileSync("compose.yaml", "utf8")) as {
  services: Record<string, Service>;
  volumes: Record<string, unknown>;
};
const { postgres, nats, orisun } = compose.services as Record<string, Service>;

describe("compose.yaml", () => {
  it("has the three services, each with a healthcheck and a restart policy", () => {
    expect(Object.keys(compose.services).sort()).toEqual(["nats", "orisun", "postgres"]);
    for (const [name, service] of Object.entries(compose.services)) {
      expect(service.restart, name).toMatch(/^(always|unless-stopped|on-failure)$/);
      expect(service.healthcheck?.test[0], name).toBe("CMD");
      expect(service.healthcheck?.interval, name).toMatch(/^\d+s$/);
      expect(service.healthcheck?.retries, name).toBeGreaterThan(0);
    }
  });

  it("starts Orisun only once PostgreSQL and NATS are healthy", () => {
    expect(orisun?.depends_on).toEqual({
      postgres: { condition: "service_healthy" },
      nats: { condition: "service_healthy" },
    });
    expect(orisun?.environment?.ORISUN_NATS_URL).toBe("nats://nats:4222");
    expect(orisun?.environment?.ORISUN_PG_URL).toMatch(/@postgres:5432\/orisun$/);
  });

  it("ships no password: compose refuses to start until POSTGRES_PASSWORD is given", () => {
    // Compose's interpolation, not a template literal: "$" and "{" are apart here.
    const required = ["$", "{POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"].join("");
    expect(postgres?.environment?.POSTGRES_PASSWORD).toBe(required);
    expect(orisun?.environment?.ORISUN_PG_URL).toBe(
      `postgres://postgres:${required}@postgres:5432/orisun`,
    );
    const everything = JSON.stringify(compose);
    expect(everything).not.toMatch(/secret|changeme|password123/i);
  });

  it("publishes only Orisun's port, and keeps data in named volumes", () => {
    expect(orisun?.ports).toEqual([`${orisun?.environment?.ORISUN_PORT}:50051`]);
    expect(postgres?.ports).toBeUndefined();
    expect(nats?.ports).toBeUndefined();
    expect(Object.keys(compose.volumes).sort()).toEqual(["natsdata", "pgdata"]);
    expect(postgres?.volumes).toEqual(["pgdata:/var/lib/postgresql/data"]);
    expect(nats?.volumes).toEqual(["natsdata:/data"]);
  });

  it("checks Orisun with the image's own healthcheck", () => {
    const dockerfile = readFileSync("Dockerfile", "utf8").replace(/\\\n\s*/g, " ");
    const declared = /HEALTHCHECK .*CMD (\[.*\])/.exec(dockerfile)?.[1];
    expect(orisun?.healthcheck?.test).toEqual([
      "CMD",
      ...(JSON.parse(declared ?? "[]") as string[]),
    ]);
  });

  it("checks NATS on its monitoring port with a URL that a real nats-server answers once JetStream is up", async () => {
    expect(nats?.image).toMatch(/^nats:[\d.]+-alpine$/);
    const command = nats?.command ?? [];
    const monitor = command[command.indexOf("-m") + 1];
    const test = nats?.healthcheck?.test ?? [];
    const url = new URL(test.at(-1) ?? "");
    expect(test.slice(0, 2)).toEqual(["CMD", "wget"]);
    expect(url.port).toBe(monitor);
    expect(command).toContain("-js");

    const port = await freePort();
    const server = await startOwnNatsServer(["-m", String(port)]);
    try {
      let status = 0;
      const deadline = Date.now() + 10_000;
      while (status !== 200 && Date.now() < deadline) {
        status = await fetch(`http://127.0.0.1:${port}${url.pathname}${url.search}`).then(
          (r) => r.status,
          () => 0,
        );
        if (status !== 200) await new Promise((r) => setTimeout(r, 100));
      }
      expect(status).toBe(200);
    } finally {
      await server.stop();
    }
  });
});
