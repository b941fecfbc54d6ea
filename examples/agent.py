#!/usr/bin/env python3
"""A whole omoi agent over HTTP, standard library only.

Registers (or reuses) an agent, then loops: heartbeat, claim a task (long poll), start it,
run a shell command for it, keep its output as the task's transcript and its last line as
progress, complete or fail it.

    OMOI_URL=http://127.0.0.1:18000 OMOI_TOKEN=<a user's access token> \
    OMOI_ORGANIZATION_ID=<id> python3 examples/agent.py 'make test'

Registering as a user returns the agent's own credential, used from then on. With
OMOI_AGENT_ID and OMOI_CREDENTIAL set (an agent registered before, or any key allowed to
run tasks) it skips registration, and fails the tasks that agent still holds (its last
process died with them). It heartbeats every 20 s, also while a task runs.
--once stops after one task (or one empty claim).
"""

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

URL = os.environ.get("OMOI_URL", "http://127.0.0.1:18000")


def call(token, path, body=None, method="POST", assignment=None):
    """`assignment`: the `assigned_at` of the claim a step belongs to (Omoi-Assignment), so
    that a run's late step is refused once the task was assigned again, even to us."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if assignment:
        headers["Omoi-Assignment"] = assignment
    request = urllib.request.Request(
        URL + path,
        data=json.dumps(body if body is not None else {}).encode() if method == "POST" else None,
        headers=headers,
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=90) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def register():
    status, agent = call(
        os.environ["OMOI_TOKEN"],
        "/api/v1/agents/register",
        {"organization_id": os.environ["OMOI_ORGANIZATION_ID"], "agent_type": "worker"},
    )
    if status != 201 or not agent.get("credential"):
        sys.exit(f"registration refused or no credential ({status}): {agent}")
    return agent["id"], agent["credential"]


def give_back_held(credential, agent):
    """An agent started again with its id may still hold tasks its last process took and
    never finished: nothing runs them now, so they are failed, to be retried. Held on, they
    would fill the agent's capacity, and its claims would wait for ever."""
    status, health = call(credential, f"/api/v1/agents/{agent}/health", method="GET")
    if status != 200:
        sys.exit(f"the agent's health is unreadable ({status}): {health}")
    for held in health["tasks"]:
        call(
            credential,
            f"/api/v1/tasks/{held['task_id']}/fail",
            {"error": "the agent was started again; this attempt's process was lost"},
        )


def heartbeat(credential, agent, stop):
    """Beats until stopped: the worker fails an agent silent for 90 s."""
    while not stop.wait(20):
        call(credential, f"/api/v1/agents/{agent}/heartbeat")


def main():
    once = "--once" in sys.argv
    command = " ".join(a for a in sys.argv[1:] if a != "--once") or "echo done"
    agent = os.environ.get("OMOI_AGENT_ID")
    credential = os.environ.get("OMOI_CREDENTIAL")
    if not (agent and credential):
        agent, credential = register()
    else:
        give_back_held(credential, agent)
    call(credential, f"/api/v1/agents/{agent}/heartbeat")
    stop = threading.Event()
    threading.Thread(target=heartbeat, args=(credential, agent, stop), daemon=True).start()
    try:
        work(agent, credential, command, once)
    finally:
        stop.set()


def work(agent, credential, command, once):
    while True:
        status, task = call(credential, f"/api/v1/agents/{agent}/claim", {"wait_seconds": 20})
        if status == 204:
            if once:
                return
            continue
        if status != 200:
            sys.exit(f"claim refused ({status}): {task}")
        task_id = task["id"]
        assignment = task["state"]["assigned_at"]
        call(credential, f"/api/v1/tasks/{task_id}/start", assignment=assignment)
        run = subprocess.run(
            command,
            shell=True,
            capture_output=True,
            text=True,
            env={**os.environ, "OMOI_TASK_ID": task_id, "OMOI_TASK_TITLE": task["state"]["title"]},
        )
        lines = run.stdout.strip().splitlines()
        transcript = [line[:4000] for line in lines + run.stderr.strip().splitlines()]
        for start in range(0, len(transcript), 1000):
            call(credential, f"/api/v1/tasks/{task_id}/logs", {"lines": transcript[start:start + 1000]},
                 assignment=assignment)
        if lines:
            call(credential, f"/api/v1/tasks/{task_id}/progress", {"message": lines[-1][:2000]},
                 assignment=assignment)
        if run.returncode == 0:
            call(credential, f"/api/v1/tasks/{task_id}/complete", {"result": {"output": lines[-20:]}},
                 assignment=assignment)
        else:
            error = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
            call(credential, f"/api/v1/tasks/{task_id}/fail", {"error": error[:2000]},
                 assignment=assignment)
        if once:
            return


if __name__ == "__main__":
    main()
