// The README's use of wsproxy-resume.d.ts, checked by tsc --strict (test_client_js.py).
import { RESUME_FAILED, ResumableSession } from "../../wsproxy-resume.js";

const s = new ResumableSession("wss://proxy.example/ws", { retryDelayMs: 100 });
s.addEventListener("message", (e) => console.log(e));
const sent: boolean = s.send("subscribe");
const code: 4410 = RESUME_FAILED;
const state: "connecting" | "open" | "resuming" | "closed" = s.state;
s.close(1000, "bye");
// @ts-expect-error: the state is read-only
s.state = "open";
// @ts-expect-error: so is what the session counts
s.received = 0;
console.log(sent, code, state, s.sessionId, s.received, s.sent, s.windowMs);
