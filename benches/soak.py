#!/usr/bin/env python3
"""Soak: real `weir serve` processes under random faults, then an invariant check.

    benches/soak.py --broker sqlite --seconds 600
    benches/soak.py --broker amqp --seconds 600      # RabbitMQ + PostgreSQL store

For the given time it enqueues jobs and submits workflows through the `weir` binary while
several `weir serve` processes run them, and injects faults: SIGKILL of a random worker (then
a new one), and with `--broker amqp` RabbitMQ and PostgreSQL restarts. Every job is a `shell`
job that appends its own marker to a file (O_APPEND: one line per run, never torn), or a
`fail` job that fails twice before it succeeds, so the check needs nothing from the broker:

- lost: a job whose marker never appears (or, embedded, a job not succeeded);
- duplicates: markers that appear more than once; at-least-once allows them only for jobs
  in flight at a kill or a restart, so their number is compared with what was in flight;
- workflows: every one must end `succeeded`, its steps' markers in order;
- pools: once drained, every worker reports 0 busy slots (embedded).

It prints one JSON line of figures (RELIABILITY.md quotes them) and exits 1 if an invariant
fails. The `weir` binary is target/release/weir unless WEIR_BIN says otherwise.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIR = os.path.abspath(os.environ.get("WEIR_BIN", os.path.join(ROOT, "target", "release", "weir")))
SLOTS = 16  # each worker's pool


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


class Soak:
    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="weir-soak-")
        self.marks = os.path.join(self.dir, "marks.log")
        tag = uuid.uuid4().hex[:8]
        if args.broker == "sqlite":
            self.broker = f"sqlite:{self.dir}/soak.db"
            self.store = self.broker
        else:
            self.broker = f"amqp://guest:guest@127.0.0.1:5672/%2f?prefix=soak{tag}"
            self.store = f"postgres://postgres@127.0.0.1/test?schema=soak{tag}"
        with open(os.path.join(self.dir, "weir.toml"), "w") as f:
            f.write(f'[shell]\nallow = ["sh"]\ndir = "{self.dir}"\n')
            f.write('[queues.default]\nworkers = 4\nmax_workers = %d\ncooldown = "5s"\n' % SLOTS)
        self.env = dict(os.environ, WEIR_BROKER=self.broker, WEIR_STORE=self.store,
                        WEIR_CONFIG=os.path.join(self.dir, "weir.toml"))
        self.workers = []
        self.expected = []      # marker of every plain job
        self.workflows = []     # (id, [step markers])
        self.fail_jobs = 0
        self.kills = 0
        self.restarts = 0
        self.in_flight_at_faults = 0

    def weir(self, *a, stdin=None, check=True):
        r = subprocess.run([WEIR, *a], input=stdin, capture_output=True, text=True,
                           env=self.env, cwd=self.dir)
        if check and r.returncode != 0:
            raise RuntimeError(f"weir {' '.join(a)}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    def start_worker(self):
        p = subprocess.Popen([WEIR, "--log", "warn", "serve", "--lease", "3s", "--tick", "1s",
                              "--grace", "5s"], env=self.env, cwd=self.dir,
                             stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(self.dir, "workers.log"), "a"))
        self.workers.append(p)

    def shell_job(self, marker):
        return {"kind": "shell", "max_attempts": 10,
                "payload": {"cmd": "sh", "args": ["-c", f"echo {marker} >> {self.marks}"]}}

    def enqueue_some(self, n):
        lines = []
        for _ in range(n):
            if random.random() < 0.1:
                self.fail_jobs += 1
                lines.append({"kind": "fail", "payload": {"times": 2}, "max_attempts": 5})
            else:
                m = "J" + uuid.uuid4().hex
                self.expected.append(m)
                lines.append(self.shell_job(m))
        self.weir("enqueue", "--batch", "-", stdin="".join(json.dumps(l) + "\n" for l in lines))

    def submit_workflow(self):
        wid = uuid.uuid4().hex
        steps = [f"W{wid}-{i}" for i in range(3)]
        # A chord: three shell children (each leaves its marker) and an `echo` callback that
        # gets their results, so the advance and the callback run under the faults too.
        spec = {"shape": "chord", "callback": {"kind": "echo", "max_attempts": 10},
                "steps": [{"kind": "shell", "max_attempts": 10,
                           "payload": {"cmd": "sh", "args": ["-c", f"echo {m} >> {self.marks}"]}}
                          for m in steps]}
        path = os.path.join(self.dir, f"wf-{wid}.json")
        with open(path, "w") as f:
            json.dump(spec, f)
        out = self.weir("workflow", "submit", path).stdout.strip()
        self.workflows.append((out, steps))

    def running_now(self):
        if self.args.broker != "sqlite":
            return len(self.workers) * SLOTS  # an upper bound: RabbitMQ does not count unacked
        r = self.weir("status", "--json", check=False)
        try:
            return sum(q["running"] for q in json.loads(r.stdout)["queues"])
        except (ValueError, KeyError):
            return len(self.workers) * SLOTS

    def kill_one(self):
        p = self.workers.pop(random.randrange(len(self.workers)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        # Counted after the kill: the dead worker's leases stay `running` until they expire,
        # so this includes every job it had in flight (and, as a bound, the others' too).
        self.in_flight_at_faults += self.running_now()
        self.kills += 1
        self.start_worker()

    def restart_services(self):
        self.in_flight_at_faults += self.running_now()
        which = random.choice(["rabbitmq", "postgres"])
        log("restarting", which)
        if which == "rabbitmq":
            subprocess.run(["rabbitmqctl", "stop_app"], capture_output=True)
            time.sleep(2)
            subprocess.run(["rabbitmqctl", "start_app"], capture_output=True)
        else:
            v = sorted(os.listdir("/etc/postgresql"))[0]
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", v, "main", "restart"],
                           capture_output=True)
        self.restarts += 1

    def marks_seen(self):
        seen = {}
        if os.path.exists(self.marks):
            with open(self.marks) as f:
                for line in f:
                    m = line.strip()
                    seen[m] = seen.get(m, 0) + 1
        return seen

    def workflow_states(self):
        states = {}
        for wid, _ in self.workflows:
            r = self.weir("inspect", wid, "--json", check=False)
            try:
                states[wid] = json.loads(r.stdout)["workflow"]["state"]
            except (ValueError, KeyError):
                states[wid] = "unknown"
        return states

    def run(self):
        a = self.args
        log(f"soak on {a.broker} for {a.seconds}s in {self.dir}")
        for _ in range(a.workers):
            self.start_worker()
        start = time.time()
        next_kill = start + random.uniform(5, 15)
        next_restart = start + random.uniform(30, 60)
        errors = 0
        while time.time() - start < a.seconds:
            try:
                self.enqueue_some(random.randint(20, 60))
                if random.random() < 0.2:
                    self.submit_workflow()
            except RuntimeError as e:
                # A producer that meets an outage (a restart) counts it and tries again;
                # what it failed to enqueue was never expected.
                errors += 1
                log("producer:", e)
            now = time.time()
            if now >= next_kill:
                self.kill_one()
                next_kill = now + random.uniform(5, 15)
            if a.broker == "amqp" and now >= next_restart:
                self.restart_services()
                next_restart = now + random.uniform(45, 90)
            time.sleep(0.2)
        log(f"producing done: {len(self.expected)} jobs, {len(self.workflows)} workflows; draining")
        deadline = time.time() + a.drain
        while True:
            seen = self.marks_seen()
            missing = [m for m in self.expected if m not in seen]
            states = self.workflow_states()
            running = [w for w, s in states.items() if s == "running"]
            if (not missing and not running) or time.time() > deadline:
                break
            time.sleep(2)
        busy = None
        if a.broker == "sqlite":
            time.sleep(3)  # one report tick
            st = json.loads(self.weir("status", "--json").stdout)
            # Only the live workers: a SIGKILLed one's last report stays in the file (up to a
            # minute in `weir status`), with whatever it was running when it died.
            live = {str(p.pid) for p in self.workers}
            busy = sum(w["busy"] for w in st["workers"] if w["worker"].rsplit(":", 1)[-1] in live)
            unfinished = sum(q["pending"] + q["running"] + q["retryable"] for q in st["queues"])
            failed = sum(q["failed"] for q in st["queues"])
        for p in self.workers:
            p.send_signal(signal.SIGTERM)
        for p in self.workers:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        wf_steps = {m for _, steps in self.workflows for m in steps}
        dup = sum(n - 1 for m, n in seen.items() if n > 1)
        figures = {
            "broker": a.broker, "seconds": a.seconds, "workers": a.workers,
            "jobs": len(self.expected) + self.fail_jobs, "shell_jobs": len(self.expected),
            "fail_jobs": self.fail_jobs, "workflows": len(self.workflows),
            "worker_kills": self.kills, "service_restarts": self.restarts,
            "producer_errors": errors,
            "lost": len(missing), "duplicates": dup,
            "in_flight_at_faults": self.in_flight_at_faults,
            "workflows_succeeded": sum(1 for s in states.values() if s == "succeeded"),
            "workflows_not_succeeded": {w: s for w, s in states.items() if s != "succeeded"},
            "workflow_steps_missing": len([m for m in wf_steps if m not in seen]),
            "busy_after_drain": busy,
        }
        if a.broker == "sqlite":
            figures["unfinished_after_drain"] = unfinished
            figures["failed"] = failed
        print(json.dumps(figures))
        problems = []
        if missing:
            problems.append(f"{len(missing)} jobs lost, e.g. {missing[:3]}")
        if dup > self.in_flight_at_faults:
            problems.append(f"{dup} duplicates, more than the {self.in_flight_at_faults} in flight at faults")
        if figures["workflows_not_succeeded"]:
            problems.append(f"workflows not succeeded: {figures['workflows_not_succeeded']}")
        if figures["workflow_steps_missing"]:
            problems.append(f"{figures['workflow_steps_missing']} workflow steps never ran")
        if busy:
            problems.append(f"{busy} slots busy after the drain (a stuck pool)")
        if a.broker == "sqlite" and (unfinished or failed):
            problems.append(f"{unfinished} jobs unfinished and {failed} failed after the drain")
        for p in problems:
            log("FAIL:", p)
        return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", choices=["sqlite", "amqp"], default="sqlite")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--workers", type=int, default=3, help="weir serve processes")
    ap.add_argument("--drain", type=int, default=180, help="seconds to wait for the end")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    random.seed(a.seed)
    sys.exit(Soak(a).run())


if __name__ == "__main__":
    main()
