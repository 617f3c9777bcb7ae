import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { lines } from "../server/cli/lines.js";

/** Every line `lines` yields for `chunks` fed one by one, flattened. */
async function read(chunks: (string | Buffer)[]) {
  const out: { line: string; n: number }[] = [];
  for await (const chunk of lines(Readable.from(chunks.map((c) => Buffer.from(c))))) {
    out.push(...chunk);
  }
  return out;
}

describe("the import's line reader", () => {
  it("splits on \\n, \\r\\n and a lone \\r, as readline does, and keeps a last line without a break", async () => {
    expect(await read(["a\nb\r\nc\rd"])).toEqual([
      { line: "a", n: 1 },
      { line: "b", n: 2 },
      { line: "c", n: 3 },
      { line: "d", n: 4 },
    ]);
  });

  it("skips blank lines but counts them, so errors name the file's line", async () => {
    expect(await read(["a\n\n  \nb\n"])).toEqual([
      { line: "a", n: 1 },
      { line: "b", n: 4 },
    ]);
  });

  it("joins a line split across chunks, a \\r\\n split between two of them included", async () => {
    expect(await read(['{"x":', "1}\r", '\n{"y"', ":2}\r", "\r\n", "z\r"])).toEqual([
      { line: '{"x":1}', n: 1 },
      { line: '{"y":2}', n: 2 },
      { line: "z", n: 4 },
    ]);
  });

  it("decodes a UTF-8 character whose bytes fall into two chunks", async () => {
    const bytes = Buffer.from("é€\n");
    const out: { line: string; n: number }[] = [];
    const input = Readable.from([bytes.subarray(0, 1), bytes.subarray(1, 3), bytes.subarray(3)]);
    for await (const chunk of lines(input)) out.push(...chunk);
    expect(out).toEqual([{ line: "é€", n: 1 }]);
  });

  it("joins a line from many chunks without a break, after a lone \\r too", async () => {
    const long = "x".repeat(1000);
    const pieces = Array.from({ length: 10 }, () => "x".repeat(100));
    expect(await read(["a\r", ...pieces, "\nb"])).toEqual([
      { line: "a", n: 1 },
      { line: long, n: 2 },
      { line: "b", n: 3 },
    ]);
  });

  it("refuses a line longer than its limit, naming the line, before reading on", async () => {
    const chunks = ["ok\n", "y".repeat(10), "y".repeat(10), "never read\n"];
    const seen: string[] = [];
    const reading = (async () => {
      for await (const chunk of lines(Readable.from(chunks.map((c) => Buffer.from(c))), 15)) {
        seen.push(...chunk.map((l) => l.line));
      }
    })();
    await expect(reading).rejects.toThrow(
      /^line 2: longer than 15 characters, which no exported event is; nothing was written$/,
    );
    expect(seen).toEqual(["ok"]);
  });

  it("reads nothing from an empty input", async () => {
    expect(await read([])).toEqual([]);
    expect(await read(["\n\r\n"])).toEqual([]);
  });
});
