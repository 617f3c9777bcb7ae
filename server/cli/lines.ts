import { createReadStream } from "node:fs";
import type { Readable } from "node:stream";

/** A file is read in a few large reads rather than many of 64 KiB. */
const READ_BYTES = 1 << 20;
export const openFile = (path: string) => createReadStream(path, { highWaterMark: READ_BYTES });

/** Line breaks as readline has them: \n, \r\n or a lone \r. */
const LINE_BREAK = /\r\n|\r|\n/;
const HAS_BREAK = /[\r\n]/;

/**
 * Longer lines are refused: an event holds at most 64 MiB of data (ORISUN_MAX_EVENT_BYTES), and a
 * file without line breaks (a binary file, one JSON array) must fail at once, not fill memory.
 */
export const MAX_LINE_CHARS = 256 * 1024 * 1024;

export interface Line {
  readonly line: string;
  /** 1-based, blank lines counted. */
  readonly n: number;
}

/**
 * The non-blank lines of the input with their numbers, a chunk of the input at a time: one
 * promise per chunk rather than one per line, which readline's iterator costs.
 */
export async function* lines(input: Readable, maxChars = MAX_LINE_CHARS): AsyncGenerator<Line[]> {
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
  // The input read so far ended with a \r, which may be the first half of a \r\n. It is kept out
  // of rest: a line built from many chunks is a rope, and reading its end would flatten it anew
  // for every chunk.
  let held = false;
  for await (const chunk of input as AsyncIterable<string>) {
    if (!held && !HAS_BREAK.test(chunk)) {
      // Still the same line: only the new chunk is searched, so a long line costs linear time.
      rest += chunk;
      if (rest.length > maxChars) {
        throw new Error(
          `line ${n + 1}: longer than ${maxChars} characters, which no exported event is; nothing was written`,
        );
      }
      continue;
    }
    let text = (held ? `${rest}\r` : rest) + chunk;
    held = chunk.endsWith("\r");
    if (held) text = text.slice(0, -1);
    const pieces = text.split(LINE_BREAK);
    rest = pieces.pop() as string;
    yield numbered(pieces);
  }
  if (rest !== "") yield numbered([rest]);
}
