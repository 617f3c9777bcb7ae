// Preloaded into a spawned server (NODE_OPTIONS=--import=…): after SIGUSR2, every fsync() the
// process makes fails with EIO, as on a disk that stopped taking writes. The embedded store's
// fsync reaches the disk through fs.fsyncSync (server/store/pglite-durable.ts), whose named import
// syncBuiltinESMExports() points at this replacement.
import fs from "node:fs";
import { syncBuiltinESMExports } from "node:module";

let failing = false;
const fsyncSync = fs.fsyncSync;
fs.fsyncSync = (fd) => {
  if (!failing) return fsyncSync(fd);
  throw Object.assign(new Error("EIO: i/o error, fsync"), {
    code: "EIO",
    errno: -5,
    syscall: "fsync",
  });
};
syncBuiltinESMExports();
process.on("SIGUSR2", () => {
  failing = true;
});
