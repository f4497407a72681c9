"""Fixtures for SDK-only tests: an in-process fake coordinator on 127.0.0.1 and a worker runner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import grpc.aio
import pytest

from worker_sdk import Worker
from worker_sdk._proto.faultline.v1 import job_service_pb2_grpc, worker_service_pb2_grpc

from .fakes import WAIT_TIMEOUT_S, FakeCoordinator, FakeJobService


@dataclass
class FakeServer:
    target: str
    coordinator: FakeCoordinator
    jobs: FakeJobService


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    grpc_server = grpc.aio.server()
    coordinator = FakeCoordinator()
    jobs = FakeJobService()
    worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(coordinator, grpc_server)
    job_service_pb2_grpc.add_JobServiceServicer_to_server(jobs, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    coordinator.target = f"127.0.0.1:{port}"
    yield FakeServer(coordinator.target, coordinator, jobs)
    await grpc_server.stop(grace=None)


@pytest.fixture
def fake(server: FakeServer) -> FakeCoordinator:
    return server.coordinator


@pytest.fixture
async def start_worker() -> AsyncIterator[Callable[[Worker], asyncio.Task[None]]]:
    """Runs workers in tasks; stops (and awaits) whatever a test left running."""
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    def start(worker: Worker) -> asyncio.Task[None]:
        task = asyncio.create_task(worker.run())
        running.append((worker, task))
        return task

    yield start
    for worker, task in running:
        if not task.done():
            await asyncio.wait_for(worker.stop(), WAIT_TIMEOUT_S)
        await asyncio.wait_for(task, WAIT_TIMEOUT_S)
