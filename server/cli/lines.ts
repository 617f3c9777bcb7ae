import { createReadStream } from "node:fs";
import type { Readable } from "node:stream";

/** A file is read in a few large reads rather than many of 64 KiB. */
const READ_BYTES = 1 << 20;
export const openFile = (path: string) => createReadStream(path, { highWaterMark: READ_BYTES });

/** Line breaks as readline has them: \n, \r\n or a lone \r. */
const LINE_BREAK = /\r\n|\r|\n/;

export interface Line {
  readonly line: string;
  /** 1-based, blank lines counted. */
  readonly n: number;
}

/**
 * The non-blank lines of the input with their numbers, a chunk of the input at a time: one
 * promise per chunk rather than one per line, which readline's iterator costs.
 */
export async function* lines(input: Readable): AsyncGenerator<Line[]> {
  input.setEncoding("utf8");
  let rest = "";
  let n = 0;
  const numbered = (pieces: string[]) => {
    const out: Line[] = [];
    for (const line of pieces) {
      n++;
      if (line.trim() !== "") out.push({ line, n });
    }
    return out;
  };
  for await (const chunk of input as AsyncIterable<string>) {
    let text = rest + chunk;
    // A \r at the end may be the first half of a \r\n: it stays with its line for the next chunk.
    const held = text.endsWith("\r");
    if (held) text = text.slice(0, -1);
    const pieces = text.split(LINE_BREAK);
    rest = (pieces.pop() as string) + (held ? "\r" : "");
    yield numbered(pieces);
  }
  if (rest.endsWith("\r")) rest = rest.slice(0, -1);
  if (rest !== "") yield numbered([rest]);
}
