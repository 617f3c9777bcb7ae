/** One sample of the Prometheus text format. */
export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);
const SUFFIXES: Record<string, readonly string[]> = {
  histogram: ["_bucket", "_sum", "_count"],
  summary: ["_sum", "_count", ""],
};

/** As Prometheus reads values (Go's ParseFloat): NaN and Inf in any case; prom-client writes "Nan". */
function parseValue(text: string, line: string): number {
  if (/^\+?inf(inity)?$/i.test(text)) return Number.POSITIVE_INFINITY;
  if (/^-inf(inity)?$/i.test(text)) return Number.NEGATIVE_INFINITY;
  if (/^nan$/i.test(text)) return Number.NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) {
    throw new Error(`bad sample value ${JSON.stringify(text)} in line ${JSON.stringify(line)}`);
  }
  return Number(text);
}

/** Parses `{a="x",b="y\"z"}` from `at`; returns the labels and where they end. */
function parseLabels(line: string, at: number): { labels: Record<string, string>; end: number } {
  const labels: Record<string, string> = {};
  let i = at + 1;
  for (;;) {
    if (line[i] === "}") return { labels, end: i + 1 };
    const eq = line.indexOf("=", i);
    if (eq < 0) throw new Error(`label without "=" in ${JSON.stringify(line)}`);
    const name = line.slice(i, eq);
    if (!LABEL_NAME.test(name)) throw new Error(`bad label name ${JSON.stringify(name)}`);
    if (name in labels) throw new Error(`label ${name} twice in ${JSON.stringify(line)}`);
    if (line[eq + 1] !== '"') throw new Error(`unquoted label value in ${JSON.stringify(line)}`);
    let value = "";
    let j = eq + 2;
    for (;;) {
      const c = line[j];
      if (c === undefined) throw new Error(`unterminated label value in ${JSON.stringify(line)}`);
      if (c === '"') break;
      if (c === "\\") {
        const escaped = line[j + 1];
        if (escaped === "n") value += "\n";
        else if (escaped === "\\" || escaped === '"') value += escaped;
        else throw new Error(`bad escape \\${escaped} in ${JSON.stringify(line)}`);
        j += 2;
        continue;
      }
      value += c;
      j++;
    }
    labels[name] = value;
    i = j + 1;
    if (line[i] === ",") i++;
    else if (line[i] !== "}") throw new Error(`expected , or } in ${JSON.stringify(line)}`);
  }
}

/**
 * Parses the Prometheus text exposition format strictly: every line is a HELP, a TYPE or a
 * sample of a family declared before it, label values are properly escaped, values are numbers,
 * and a histogram's buckets grow with `le` up to +Inf, which equals its _count. Throws on the
 * first violation.
 */
export function parseExposition(text: string): Sample[] {
  if (!text.endsWith("\n")) throw new Error("the exposition must end with a line feed");
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.slice(0, -1).split("\n")) {
    if (line.startsWith("#")) {
      const m = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
      if (!m) throw new Error(`bad comment line ${JSON.stringify(line)}`);
      const [, kind, name = "", rest = ""] = m;
      if (!NAME.test(name)) throw new Error(`bad metric name ${JSON.stringify(name)}`);
      if (kind === "TYPE") {
        if (!TYPES.has(rest)) throw new Error(`bad type ${JSON.stringify(rest)} for ${name}`);
        if (types.has(name)) throw new Error(`${name} typed twice`);
        types.set(name, rest);
      }
      continue;
    }
    if (line === "") continue; // allowed between families, and prom-client writes them
    const nameEnd = line.search(/[{ ]/);
    const name = line.slice(0, nameEnd);
    if (!NAME.test(name)) throw new Error(`bad sample name in ${JSON.stringify(line)}`);
    let labels: Record<string, string> = {};
    let rest = nameEnd;
    if (line[nameEnd] === "{") ({ labels, end: rest } = parseLabels(line, nameEnd));
    if (line[rest] !== " ") throw new Error(`expected a space before the value in ${line}`);
    const parts = line.slice(rest + 1).split(" ");
    if (parts.length > 2) throw new Error(`too many fields in ${JSON.stringify(line)}`);
    if (parts[1] !== undefined && !/^-?\d+$/.test(parts[1])) {
      throw new Error(`bad timestamp in ${JSON.stringify(line)}`);
    }
    const family = [...types.keys()].find(
      (f) =>
        f === name ||
        (SUFFIXES[types.get(f) ?? ""] ?? []).some((suffix) => suffix && f + suffix === name),
    );
    if (family === undefined) throw new Error(`sample ${name} has no TYPE before it`);
    samples.push({ name, labels, value: parseValue(parts[0] ?? "", line) });
  }
  checkHistograms(samples, types);
  return samples;
}

function checkHistograms(samples: readonly Sample[], types: ReadonlyMap<string, string>): void {
  for (const [family, type] of types) {
    if (type !== "histogram") continue;
    const series = new Map<string, Sample[]>();
    for (const s of samples) {
      if (s.name !== `${family}_bucket`) continue;
      const { le, ...rest } = s.labels;
      if (le === undefined) throw new Error(`${family}_bucket without le`);
      const key = JSON.stringify(Object.entries(rest).sort());
      series.set(key, [...(series.get(key) ?? []), s]);
    }
    for (const [key, buckets] of series) {
      let previous = Number.NEGATIVE_INFINITY;
      let count = 0;
      for (const b of buckets) {
        const le = parseValue(b.labels.le ?? "", family);
        if (le <= previous) throw new Error(`${family}${key}: le not increasing`);
        if (b.value < count) throw new Error(`${family}${key}: bucket counts decrease`);
        previous = le;
        count = b.value;
      }
      if (previous !== Number.POSITIVE_INFINITY) throw new Error(`${family}${key}: no +Inf bucket`);
      const total = samples.find(
        (s) =>
          s.name === `${family}_count` && JSON.stringify(Object.entries(s.labels).sort()) === key,
      );
      if (total?.value !== count) throw new Error(`${family}${key}: +Inf bucket is not _count`);
    }
  }
}

/** The value of the sample with exactly these labels (other labels must be absent); 0 if none. */
export function sampleValue(
  samples: readonly Sample[],
  name: string,
  labels: Readonly<Record<string, string>> = {},
): number {
  const want = JSON.stringify(Object.entries(labels).sort());
  const found = samples.find(
    (s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want,
  );
  return found?.value ?? 0;
}

/** Whether a sample of this name (with these labels among its own) exists. */
export function has(
  samples: readonly Sample[],
  name: string,
  labels: Readonly<Record<string, string>> = {},
): boolean {
  return samples.some(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
}
