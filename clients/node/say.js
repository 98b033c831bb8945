#!/usr/bin/env node
// Speaks a text through avatar.v1.AvatarService/Speak and writes the reply's
// fragmented MP4 (init segment + media segments) to a file. Shows that the
// contract works from any language: the stubs come straight from the .proto.
//
//   node say.js --server localhost:50051 "Hello from Node" -o hello-node.mp4
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

function parseArgs(argv) {
  const args = { server: process.env.AVATAR_SERVER || "localhost:50051", output: "say-node.mp4",
                 apiKey: process.env.AVATAR_API_KEY || "", language: "", text: "" };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--server") args.server = argv[++i];
    else if (arg === "-o" || arg === "--output") args.output = argv[++i];
    else if (arg === "--api-key") args.apiKey = argv[++i];
    else if (arg === "--language") args.language = argv[++i];
    else args.text = arg;
  }
  if (!args.text) {
    console.error("usage: say.js [--server HOST:PORT] [--language TAG] [--api-key KEY] TEXT [-o FILE.mp4]");
    process.exit(2);
  }
  return args;
}

function loadService() {
  const protoRoot = path.resolve(__dirname, "../../proto");
  const definition = protoLoader.loadSync("avatar/v1/avatar.proto", {
    includeDirs: [protoRoot], keepCase: true, longs: Number, defaults: true, oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).avatar.v1.AvatarService;
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const AvatarService = loadService();
  const client = new AvatarService(args.server, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  if (args.apiKey) metadata.set("authorization", `Bearer ${args.apiKey}`);

  const parts = [];
  let completed = null;
  const call = client.Speak({ text: args.text, config: { language: args.language } }, metadata);
  call.on("data", (event) => {
    switch (event.event) {
      case "session_started":
        console.error(`session ${event.session_id}: renderer=${event.session_started.renderer}`);
        break;
      case "video_init":
        parts.unshift(event.video_init.data);
        break;
      case "video_segment":
        parts.push(event.video_segment.data);
        break;
      case "turn_completed":
        completed = event.turn_completed;
        break;
      case "error":
        console.error(`error [${event.error.stage}] ${event.error.code}: ${event.error.message}`);
        break;
      default:
        break;
    }
  });
  call.on("error", (error) => {
    console.error(`avatar-say: ${error.code} ${error.details}`);
    process.exit(1);
  });
  call.on("end", () => {
    if (!completed) {
      console.error("avatar-say: the turn did not complete");
      process.exit(1);
    }
    fs.writeFileSync(args.output, Buffer.concat(parts));
    const t = completed.timings;
    console.log(JSON.stringify({ output: args.output, frames: completed.frames,
      media_seconds: completed.media_seconds, first_segment_ms: t.first_segment_ms,
      total_ms: t.total_ms }));
  });
}

main();
