#!/usr/bin/env node
/**
 * The `orisun` command. Node's compile cache (22.1+) keeps the compiled modules of the commands
 * between runs, so a later start loads them instead of compiling them: 0.13 s instead of 0.17 s
 * for `orisun help` here, which scripts and health checks pay on every call. It must be enabled
 * before the modules load, hence the dynamic import.
 */
import { enableCompileCache } from "node:module";

enableCompileCache?.();
await import("./commands.js");
