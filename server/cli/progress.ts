/**
 * A progress line on stderr: rewritten in place on a terminal, else one line at most every few
 * seconds (a log file should not get one per page).
 */
export class Progress {
  private last = 0;
  private readonly started = Date.now();
  private readonly tty = process.stderr.isTTY === true;

  constructor(private verb: string) {}

  update(events: number, detail: string, force = false): void {
    const now = Date.now();
    if (!force && now - this.last < (this.tty ? 200 : 5_000)) return;
    this.last = now;
    const seconds = (now - this.started) / 1000;
    const rate = seconds > 0 ? Math.round(events / seconds) : 0;
    const line = `${this.verb} ${events} events (${rate} events/s) ${detail}`;
    process.stderr.write(this.tty ? `\r\x1b[K${line}` : `${line}\n`);
  }

  /** The final line, always written, ending the in-place line on a terminal; `verb` if it changed. */
  done(events: number, detail: string, verb = this.verb): void {
    this.verb = verb;
    this.update(events, detail, true);
    if (this.tty) process.stderr.write("\n");
  }
}
