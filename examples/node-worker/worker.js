// A Faultline worker in Node.js, written from protos/faultline/v1 and docs/protocol.md alone.
//
//   node worker.js --addr 127.0.0.1:50051 --worker-id node-1 [--capacity 8] [--protos ../../protos]
//
// It handles kind "node-echo": the result is the payload. A JSON payload may ask for a protocol case:
//   {"case": "stale"}      first complete with a token never granted for it (expects STALE_LEASE), then for real
//   {"case": "duplicate"}  complete twice (expects ACCEPTED, then DUPLICATE with job_state SUCCEEDED)
//   {"case": "hold"}       never completes; heartbeats until the coordinator cancels it, then fails it
// Everything it sees is printed as one JSON line per event on stdout, for tests/e2e/test_node_worker.py.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
}

const ADDR = arg("addr", "127.0.0.1:50051");
const WORKER_ID = arg("worker-id", `node-${process.pid}`);
const CAPACITY = Number(arg("capacity", "8"));
const PROTOS = path.resolve(arg("protos", path.join(__dirname, "..", "..", "protos")));

function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

// uint64/int64 fields (fencing_token, seq) arrive as strings (longs: String): never Number, which loses
// precision above 2^53. Tokens are compared and sent back as strings or BigInt.
const def = protoLoader.loadSync(path.join(PROTOS, "faultline/v1/worker_service.proto"), {
  includeDirs: [PROTOS],
  keepCase: true, // field names as in the .proto (worker_id, not workerId)
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const pkg = grpc.loadPackageDefinition(def).faultline.v1;
const client = new pkg.WorkerService(ADDR, grpc.credentials.createInsecure());
const call = client.Connect();

let seq = 0n;
const pending = new Map(); // seq -> what the frame was, to print with its reply
const held = new Map(); // lease_id -> {lease_id, fencing_token, job_id, kase}
let heartbeatTimer = null;
let draining = false;

function send(frames) {
  call.write({ frames });
}

// A frame that gets a Reply carries a fresh seq (the coordinator echoes it; it does not refuse repeats).
function request(frame, what) {
  seq += 1n;
  pending.set(seq.toString(), what);
  send([{ seq: seq.toString(), ...frame }]);
}

function ref(lease) {
  return { lease_id: lease.lease_id, fencing_token: lease.fencing_token };
}

function complete(lease, result, what) {
  request({ complete: { lease: ref(lease), result } }, { what, job_id: lease.job_id, lease_id: lease.lease_id });
}

function onLease(grant) {
  const job = grant.job;
  let kase = "";
  try {
    kase = JSON.parse(Buffer.from(job.payload).toString() || "{}").case || "";
  } catch (e) {
    kase = "";
  }
  const lease = { lease_id: grant.lease_id, fencing_token: grant.fencing_token, job_id: job.id, kase };
  held.set(lease.lease_id, lease);
  emit("lease", { job_id: job.id, lease_id: lease.lease_id, token: lease.fencing_token, attempt: grant.attempt,
                  kase, has_trace: Object.keys(grant.trace_context || {}).length > 0 });
  if (kase === "hold") return; // waits for CancelLease
  if (kase === "stale") {
    // The lease id is "<job id>.<token>" and must agree with fencing_token: a newer token, named consistently.
    // (Not the previous one: a first attempt holds token 1, and token 0 is out of range, refused as INVALID.)
    const old = (BigInt(lease.fencing_token) + 1n).toString();
    request({ complete: { lease: { lease_id: `${job.id}.${old}`, fencing_token: old }, result: Buffer.from("x") } },
            { what: "stale complete", job_id: job.id, lease_id: lease.lease_id });
  }
  complete(lease, job.payload, "complete");
  if (kase === "duplicate") complete(lease, job.payload, "duplicate complete");
}

function onReply(reply) {
  const what = pending.get(reply.seq) || { what: "unknown" };
  pending.delete(reply.seq);
  emit("reply", { ...what, seq: reply.seq, status: reply.status, message: reply.message, job_state: reply.job_state,
                  leases: (reply.leases || []).map((l) => ({ lease_id: l.lease.lease_id, status: l.status })) });
  const closes = ["complete", "fail"].includes(what.what);
  if (closes && what.lease_id && held.has(what.lease_id)) {
    held.delete(what.lease_id);
    // A finished lease does not give its credit back: say so, or the session starves.
    if (!draining) send([{ credit: { count: 1 } }]);
  }
  maybeEnd();
}

function heartbeat() {
  if (held.size === 0) return;
  request({ heartbeat: { leases: [...held.values()].map(ref) } }, { what: "heartbeat" });
}

// Draining: take nothing more, finish what is held, then half-close; the coordinator ends the stream OK.
function maybeEnd() {
  if (draining && held.size === 0 && pending.size === 0) {
    emit("closing", {});
    call.end();
  }
}

call.on("data", (msg) => {
  for (const f of msg.frames) {
    switch (f.frame) {
      case "welcome": {
        const ms = Number(f.welcome.heartbeat_interval.seconds) * 1000 + f.welcome.heartbeat_interval.nanos / 1e6;
        emit("welcome", { session_id: f.welcome.session_id, heartbeat_ms: ms,
                          accepts_release: f.welcome.accepts_release });
        heartbeatTimer = setInterval(heartbeat, Math.max(100, ms));
        // A session starts with zero credit: nothing is granted until the worker asks.
        send([{ credit: { count: CAPACITY } }]);
        break;
      }
      case "lease":
        onLease(f.lease);
        break;
      case "reply":
        onReply(f.reply);
        break;
      case "cancel": {
        const lease = held.get(f.cancel.lease.lease_id);
        emit("cancel", { lease_id: f.cancel.lease.lease_id, reason: f.cancel.reason });
        if (lease) {
          request({ fail: { lease: ref(lease), error: "cancelled by the coordinator", retryable: false } },
                  { what: "fail", job_id: lease.job_id, lease_id: lease.lease_id });
        }
        break;
      }
      case "drain":
        draining = true;
        emit("drain", { grace_s: Number(f.drain.grace.seconds) + f.drain.grace.nanos / 1e9 });
        maybeEnd();
        break;
      default:
        emit("unknown frame", { frame: f.frame });
    }
  }
});

call.on("status", (st) => {
  emit("end", { code: grpc.status[st.code], details: st.details });
  if (heartbeatTimer) clearInterval(heartbeatTimer);
  process.exit(st.code === grpc.status.OK ? 0 : 1);
});
call.on("error", () => {}); // the status event reports it

// Hello gets no Reply: a Welcome, or (when it is invalid) the end of the stream with INVALID_ARGUMENT.
send([{ hello: { worker_id: WORKER_ID, queues: ["default"], kinds: ["node-echo"], capacity: CAPACITY,
                 sdk_name: "faultline-node-example", sdk_version: "0.1.0" } }]);
