"""Submitted by the rehearsal: where the job's driver and a task on every worker node load the project from.

    ray job submit --working-dir . -- python infra/rehearsal/probe_origin.py

Prints one line `ORIGIN {json}`: the driver's working directory and code origin, and each task's node,
working directory and code origin. Both packages must come from the uploaded working dir everywhere.
"""

from __future__ import annotations

import json
import os

import ray

from clipsynth_platform.runtime.origin import code_origin


@ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
def _where() -> dict:
    return {"node": ray.get_runtime_context().get_node_id(), "cwd": os.getcwd(), **code_origin().to_dict()}


def main() -> None:
    ray.init()
    tasks = ray.get([_where.remote() for _ in range(4)])
    driver = {"cwd": os.getcwd(), **code_origin().to_dict()}
    print("ORIGIN " + json.dumps({"driver": driver, "tasks": tasks}), flush=True)


if __name__ == "__main__":
    main()
