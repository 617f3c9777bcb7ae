import { Writable } from "node:stream";
import type { FastifyBaseLogger } from "fastify";
import pino from "pino";
import { describe, expect, it, vi } from "vitest";
import { lazyChildLogger } from "../server/process/lazy-child-logger.js";

function parent(level: string) {
  const lines: Record<string, unknown>[] = [];
  const out = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split("\n").filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  const log = pino({ level }, out) as unknown as FastifyBaseLogger;
  return { log, lines, child: vi.spyOn(log, "child") };
}

describe("lazyChildLogger", () => {
  it("makes no child logger until a line is written at an enabled level", () => {
    const { log, lines, child } = parent("info");
    const lazy = lazyChildLogger(log, { reqId: "r-1" });
    expect(lazy.level).toBe("info");
    expect(child).not.toHaveBeenCalled();
    lazy.debug({ a: 1 }, "below the level");
    expect(lines).toEqual([]);
    lazy.warn({ a: 2 }, "written");
    lazy.error("with %s", "arguments");
    expect(child).toHaveBeenCalledTimes(1);
    expect(lines).toMatchObject([
      { level: 40, reqId: "r-1", a: 2, msg: "written" },
      { level: 50, reqId: "r-1", msg: "with arguments" },
    ]);
  });

  it("binds more through child, and takes a level of its own", () => {
    const { log, lines } = parent("info");
    const lazy = lazyChildLogger(log, { reqId: "r-2" });
    lazy.child({ rpc: "SaveEvents" }).info("bound");
    lazy.level = "debug";
    lazy.debug("now written");
    expect(log.level).toBe("info");
    expect(lines).toMatchObject([
      { reqId: "r-2", rpc: "SaveEvents", msg: "bound" },
      { reqId: "r-2", msg: "now written" },
    ]);
  });
});
