"""Pydantic models of the REST API's request and response bodies: the OpenAPI spec (``/openapi.json``).

They document; they do not parse. Requests are still checked by ``orchestrator.core.validation`` (so
a refusal keeps its ``{"error", "field"}`` body naming the field, and the bounds stay in one place), and
responses are still built by ``orchestrator.views`` in upstream Propeller's shapes. The models describe
exactly those shapes; ``tests/integration/test_api_schema.py`` (schemathesis against a running manager)
fails when a route answers a status or a body its description does not list.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, create_model
from pydantic.json_schema import SkipJsonSchema

from orchestrator.core import observations as obs
from orchestrator.core.identity import ID_RE
from orchestrator.core.model import TaskState
from orchestrator.core.validation import MAX_DEPTH
from orchestrator.wire.messages import MONITORING_BOOL_KEYS, MONITORING_INT_KEYS

STATE_NAMES = [s.label for s in TaskState]
ID_PATTERN = f"^{ID_RE.pattern}$"  # check_id fullmatches it

StateNumber = Annotated[
    int,
    Field(ge=0, le=len(TaskState) - 1, description="Upstream's task state number: " + ", ".join(
        f"{int(s)} {s.label}" for s in TaskState
    )),
]  # fmt: skip
StateName = Annotated[str, Field(json_schema_extra={"enum": STATE_NAMES}, description="The state's name")]
Time = Annotated[str, Field(description="RFC 3339 UTC; 0001-01-01T00:00:00Z when unset")]


class Model(BaseModel):
    """Responses may grow fields (upstream compatibility): extra keys are allowed."""

    model_config = ConfigDict(extra="allow")


class Strict(BaseModel):
    """Requests: an unknown key is refused (400 naming it)."""

    model_config = ConfigDict(extra="forbid")


# ---- errors ---------------------------------------------------------------------------------------


class ErrorBody(Model):
    """Every refusal: what was wrong, and the input field to blame when there is one."""

    error: str
    field: str | SkipJsonSchema[None] = Field(
        None, description="Path of the offending field, e.g. metadata, inputs[2]"
    )


# ---- tasks ----------------------------------------------------------------------------------------


class Limits(Strict):
    fuel: PositiveFloat | SkipJsonSchema[None] = None
    memory_bytes: PositiveFloat | SkipJsonSchema[None] = None
    timeout_s: PositiveFloat | SkipJsonSchema[None] = None
    output_bytes: PositiveFloat | SkipJsonSchema[None] = None
    log_bytes: PositiveFloat | SkipJsonSchema[None] = None


class Requires(Strict):
    tee: bool = False
    tags: list[str] = Field(default_factory=list)


MonitoringProfile = create_model(
    "MonitoringProfile",
    __config__=ConfigDict(extra="forbid"),
    **{k: (bool, False) for k in MONITORING_BOOL_KEYS},
    **{k: (int, Field(0, ge=0, le=0xFFFFFFFF)) for k in MONITORING_INT_KEYS},
)  # type: ignore[call-overload]

NonBlank = Field(max_length=1024, pattern=r"\S", description="Also the export the proplet calls")


class TaskFields(Strict):
    """A task's writable fields (upstream names), ``null`` meaning absent. The bounds are in
    docs/api.md, "Input bounds": no NUL or lone surrogate in any string, integers within 64 bits,
    values nested at most ``MAX_DEPTH`` levels."""

    id: str | None = Field(None, max_length=255, description="A UUID is generated when absent")
    name: str | None = Field(None, max_length=1024, pattern=r"\S")
    kind: Literal["standard", "federated"] | None = None
    image_url: str | None = Field(None, description="HTTP(S) or OCI reference of the module")
    file: str | None = Field(None, description="The module inline, base64 (binary wasm, at most 7 MiB)")
    cli_args: list[str] | None = None
    inputs: list[str | float] | None = Field(None, description="Strings or numbers, sent as strings")
    env: dict[str, str] | None = None
    daemon: bool | None = None
    latent: bool | None = None
    encrypted: bool | None = Field(None, description="Needs image_url (an encrypted OCI image), no file")
    proplet_id: str | None = Field(None, max_length=255, description="Pin to a proplet")
    depends_on: list[str] | None = None
    run_if: Literal["", "success", "failure"] | None = None
    workflow_id: str | None = Field(None, max_length=255)
    job_id: str | None = Field(None, max_length=255)
    priority: int | None = Field(None, ge=0, le=100)
    broadcast: bool | None = Field(None, description="Run on every proplet; excludes proplet_id")
    metadata: dict[str, Any] | None = Field(
        None, description=f"Free JSON object, at most 1 MiB and {MAX_DEPTH} levels deep"
    )
    requires: Requires | None = Field(None, description="Placement: a TEE, proplet tags")
    schedule: str | None = Field(None, description="Cron expression")
    timezone: str | None = Field(None, max_length=64)
    is_recurring: bool | None = None
    sha256: str | None = Field(None, pattern=r"^(sha256:)?[0-9a-fA-F]{64}$")
    memory_bytes: int | None = Field(None, ge=0, le=1 << 40)
    limits: Limits | None = None
    max_attempts: int | None = Field(None, ge=1, le=100)
    monitoring_profile: MonitoringProfile | None = None  # type: ignore[valid-type]
    kbs_resource_path: str | None = None
    hal_storage_path: str | None = None
    mode: str | None = Field(None, max_length=64)
    # Read-only keys upstream clients send back: accepted and ignored.
    state: Any = None
    results: Any = None
    error: Any = None
    start_time: Any = None
    finish_time: Any = None
    created_at: Any = None
    updated_at: Any = None
    next_run: Any = None
    attempt: Any = None


class NewTask(TaskFields):
    """A task of a batch, workflow or job: ``name`` is required."""

    name: str = NonBlank


class TaskSpec(NewTask):
    """``POST /tasks``: a new task; ``start`` creates and starts it in one call."""

    start: bool = Field(False, description="Start it at once")


class TaskUpdate(Strict):
    """``PUT /tasks/{id}``: the fields to change, on a task that is not scheduled or running."""

    id: str | None = Field(None, description="Ignored (the path names the task)")
    name: str | None = Field(None, max_length=1024, pattern=r"\S")
    inputs: list[str | float] | None = None
    file: str | None = Field(None, description="The module inline, base64 (binary wasm)")
    priority: int | None = Field(None, ge=0, le=100)
    metadata: dict[str, Any] | None = None
    schedule: str | None = Field(None, description="Cron expression")
    is_recurring: bool | None = None
    timezone: str | None = Field(None, max_length=64)


class TaskBatch(Strict):
    tasks: list[NewTask] = Field(min_length=1, max_length=1000)
    start: bool = False


class ModuleSummary(Model):
    size: int
    sha256: str


class TaskView(Model):
    """A task in upstream's shape. Fields after ``verified`` are left out when empty."""

    id: str
    name: str
    kind: str
    state: StateNumber
    state_name: StateName
    cli_args: list[str]
    daemon: bool
    encrypted: bool
    start_time: Time
    finish_time: Time
    created_at: Time
    updated_at: Time
    next_run: Time
    attempt: int = Field(description="Number of the task's latest start; never reused")
    max_attempts: int
    attempts_counted: int = Field(
        description="Attempts spent against max_attempts (starts refused or lost are not counted)"
    )
    verified: bool = Field(description="The result's receipt verified against the enrolled key")
    image_url: str | SkipJsonSchema[None] = None
    file: str | SkipJsonSchema[None] = Field(None, description="The module's base64, redacted in the middle")
    inputs: list[str] | SkipJsonSchema[None] = None
    env: dict[str, str] | SkipJsonSchema[None] = None
    latent: bool | SkipJsonSchema[None] = None
    proplet_id: str | SkipJsonSchema[None] = None
    depends_on: list[str] | SkipJsonSchema[None] = None
    run_if: str | SkipJsonSchema[None] = None
    workflow_id: str | SkipJsonSchema[None] = None
    job_id: str | SkipJsonSchema[None] = None
    kbs_resource_path: str | SkipJsonSchema[None] = None
    monitoring_profile: dict[str, Any] | SkipJsonSchema[None] = None
    hal_storage_path: str | SkipJsonSchema[None] = None
    results: Any = None
    result_type: Literal["json", "text", "binary"] | SkipJsonSchema[None] = None
    error: str | SkipJsonSchema[None] = None
    priority: int | SkipJsonSchema[None] = None
    broadcast: bool | SkipJsonSchema[None] = None
    metadata: dict[str, Any] | SkipJsonSchema[None] = None
    schedule: str | SkipJsonSchema[None] = None
    timezone: str | SkipJsonSchema[None] = None
    is_recurring: bool | SkipJsonSchema[None] = None
    sha256: str | SkipJsonSchema[None] = None
    memory_bytes: int | SkipJsonSchema[None] = None
    limits: dict[str, float] | SkipJsonSchema[None] = None
    module: ModuleSummary | SkipJsonSchema[None] = Field(
        None, description="The inline module's size and digest"
    )


class Page(Model):
    offset: int
    limit: int
    total: int


class TaskPage(Page):
    tasks: list[TaskView]


class BatchItem(Model):
    index: int
    status: int = Field(description="201, or the status the task alone would have got")
    task: TaskView | SkipJsonSchema[None] = None
    error: str | SkipJsonSchema[None] = None
    field: str | SkipJsonSchema[None] = None


class BatchResult(Model):
    """201 all created, 207 some, 400 none (each item says why)."""

    created: int
    failed: int
    started: bool
    results: list[BatchItem]


class Started(Model):
    started: bool


class Stopped(Model):
    stopped: bool


class InvokeRequest(Strict):
    inputs: list[str | float] | None = None
    env: dict[str, str] | None = None


class Invoked(Model):
    invoked: bool
    results: Any = None
    verified: bool | None = None
    error: str | SkipJsonSchema[None] = Field(
        None, description="Why the invocation failed (502, or 504 on timeout)"
    )


class Results(Model):
    """``GET /tasks/{id}/results`` (and ``format=json``). ``format=raw`` answers the stored bytes."""

    results: Any
    result_type: Literal["json", "text", "binary"] | SkipJsonSchema[None] = None
    encoding: Literal["base64"] | SkipJsonSchema[None] = None


class LogRow(Model):
    id: int
    stream: str
    data: str
    proplet_id: str
    seq: int
    final: bool
    timestamp: float


class Logs(Model):
    task_id: str
    attempt: int
    state: StateNumber
    done: bool = Field(description="The attempt is over and nothing is left past this page")
    next: int = Field(description="Pass as after= for the next page")
    logs: list[LogRow]


class SignedReceipt(Model):
    receipt: dict[str, Any]
    public_key: str | None


class Receipt(Model):
    task_id: str
    verified: bool
    receipt: dict[str, Any] | SkipJsonSchema[None] = None
    public_key: str | None = None
    receipts: dict[str, SignedReceipt] | SkipJsonSchema[None] = Field(
        None, description="Broadcast tasks, by proplet id"
    )


class TaskMetric(Model):
    task_id: str
    proplet_id: str
    metrics: Any
    aggregated: Any
    timestamp: Time


class TaskMetricsPage(Page):
    metrics: list[TaskMetric]


class Event(Model):
    at: Time
    at_unix: float
    kind: str
    cause: str
    fields: dict[str, Any]


class TaskEvents(Model):
    task_id: str
    total: int
    events: list[Event]


class PropletEvents(Model):
    proplet_id: str
    total: int
    events: list[Event]


class ReportedEvent(Strict):
    kind: Literal["fault", "console", "note"]
    cause: str = Field("", max_length=obs.MAX_CAUSE_CHARS, description="What happened, one line")
    at: float | None = Field(
        None, ge=0, description="UNIX seconds; the manager's time when absent; at most 300 s ahead of it"
    )
    source: str = Field("", max_length=obs.MAX_SOURCE_CHARS, description="Who saw it (twin, board, ...)")
    fields: dict[str, Any] = Field(
        default_factory=dict, description=f"At most {obs.MAX_FIELDS_BYTES} bytes of JSON"
    )


class EventReport(Strict):
    """Events seen from outside the manager: twin faults, board console lines, operator notes."""

    events: list[ReportedEvent] = Field(..., min_length=1, max_length=obs.MAX_EVENTS)


class EventsRecorded(Model):
    recorded: int = Field(..., description="Events accepted")
    tasks: dict[str, int] = Field(..., description="Task id -> events that joined its timeline")


# ---- proplets ---------------------------------------------------------------------------------------


class PropletView(Model):
    id: str
    name: str
    task_count: int
    alive: bool
    metadata: dict[str, Any]
    namespace: str | SkipJsonSchema[None] = None
    last_alive_at: Time | SkipJsonSchema[None] = None


class PropletPage(Page):
    proplets: list[PropletView]


class EnrollRequest(Strict):
    id: str | None = Field(None, pattern=ID_PATTERN, description="Generated when absent")
    kind: Literal["proplet", "upstream"] | None = Field(None, description="proplet (the default) or upstream")
    client_id: str | None = Field(
        None, pattern=ID_PATTERN, description="An upstream proplet's MQTT client id"
    )
    key: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="The broker password (upstream's key); drawn when absent",
    )


class IdentityFile(Model):
    """Shown once: the broker password (and signing key) are not stored by the manager."""

    proplet_id: str
    client_id: str
    username: str
    password: str
    kind: str
    signing_key: str | SkipJsonSchema[None] = None
    public_key: str | SkipJsonSchema[None] = None
    broker: str | SkipJsonSchema[None] = None


class IdentityView(Model):
    proplet_id: str
    client_id: str
    username: str
    kind: str
    public_key: str | None
    created_at: float
    revoked: bool
    revoked_at: float | None


class IdentityPage(Page):
    identities: list[IdentityView]


class AliveHistory(Page):
    history: list[Time]


class PropletMetric(Model):
    proplet_id: str
    namespace: str
    timestamp: Time
    cpu_metrics: Any
    memory_metrics: Any


class PropletMetricsPage(Page):
    metrics: list[PropletMetric]


# ---- workflows and jobs ---------------------------------------------------------------------------------


class WorkflowRequest(Strict):
    tasks: list[NewTask] = Field(min_length=1, description="Linked by depends_on (ids or names)")


class WorkflowCreated(Model):
    tasks: list[TaskView]


GroupState = Literal["pending", "running", "completed", "failed"]


class WorkflowSummary(Model):
    workflow_id: str
    state: GroupState
    tasks: int
    created_at: Time


class WorkflowPage(Page):
    workflows: list[WorkflowSummary]


class WorkflowDetail(Model):
    workflow_id: str
    state: GroupState
    created_at: Time
    tasks: list[TaskView]


class JobRequest(Strict):
    name: str = Field("", max_length=1024)
    execution_mode: Literal["", "parallel", "sequential", "configurable"] | None = Field(
        None, description="parallel (the default), sequential or configurable"
    )
    tasks: list[NewTask] = Field(min_length=1)


class JobCreated(Model):
    job_id: str
    tasks: list[TaskView]


class JobSummary(Model):
    job_id: str
    name: str
    execution_mode: str
    state: Literal["pending", "running", "completed", "failed"]
    tasks: int
    start_time: Time
    finish_time: Time
    created_at: Time


class JobDetail(JobSummary):
    tasks: list[TaskView]  # type: ignore[assignment]


class JobPage(Page):
    jobs: list[JobSummary]


class JobAction(Model):
    message: str
    job_id: str


# ---- the manager ----------------------------------------------------------------------------------


class Health(Model):
    """200 pass, 503 fail (the manager's own broker session is down)."""

    status: Literal["pass", "fail"]
    role: str = Field(description="leader, standby, starting or deposed (docs/ha.md)")
    checks: dict[str, str]
    version: str
    commit: str
    description: str
    build_time: str
    instance_id: str
    uptime_s: float


# ---- query parameters ---------------------------------------------------------------------------------

Offset = Annotated[int, Field(ge=0, le=(1 << 63) - 1, description="Items to skip")]


class PageQuery(BaseModel):
    offset: Offset = 0
    limit: int = Field(100, ge=1, le=(1 << 63) - 1, description="Items per page")


class TaskQuery(BaseModel):
    offset: Offset = 0
    limit: int = Field(100, ge=1, le=100, description="Tasks per page")
    state: str | None = Field(None, description="A state number or name (case-insensitive)")
    proplet_id: str | None = Field(None, max_length=255)
    name: str | None = Field(None, max_length=1024)
    workflow_id: str | None = Field(None, max_length=255)
    job_id: str | None = Field(None, max_length=255)
    metadata: str | None = Field(
        None, description='Metadata that must match, a JSON object of scalars: {"team":"a"}'
    )


class TaskGetQuery(BaseModel):
    module: Literal["", "0", "1", "true", "false"] = Field(
        "", description="1: the whole module (base64) in file instead of upstream's redaction"
    )


class StatusQuery(PageQuery):
    status: Literal["", "active", "inactive"] = ""


class JobQuery(PageQuery):
    status: Literal["", "pending", "running", "completed", "failed"] = ""


class ResultsQuery(BaseModel):
    format: Literal["", "json", "raw"] = Field(
        "", description="json: the result parsed; raw: the bytes as the task returned them"
    )


class LogsQuery(BaseModel):
    attempt: int | None = Field(None, ge=0, description="Default: the current attempt")
    after: int = Field(0, ge=0, description="Rows after this id (the previous page's next)")
    live: Literal["", "0", "1", "true", "false"] = Field("", description="1: the live pieces only")


# 400 from POST /tasks/batch: either no task was created (a BatchResult) or the body itself was wrong.
BATCH_400 = {
    "schema": {
        "anyOf": [{"$ref": "#/components/schemas/BatchResult"}, {"$ref": "#/components/schemas/ErrorBody"}]
    }
}
# GET /tasks/{id}/results: by format; no body at all while the task has no result.
RESULTS_MEDIA = {
    "application/json": {
        "schema": {
            "anyOf": [
                {"$ref": "#/components/schemas/Results"},
                {"description": "format=raw of a JSON result: the value as the task returned it"},
            ]
        }
    },
    "text/plain": {"schema": {"type": "string", "description": "format=raw of a text result"}},
    "application/octet-stream": {
        "schema": {"type": "string", "format": "binary", "description": "format=raw of a binary result"}
    },
}


class Upload(BaseModel):
    file: bytes = Field(description="The binary module; its file name must end in .wasm")


# ---- route descriptions -----------------------------------------------------------------------------

STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "Done; no body",
    207: "Some created: each item says how it went",
    400: "Invalid input (body, query or header); `field` names the input to blame",
    401: "Missing or invalid bearer token (only when the manager has API tokens)",
    403: "A read-scope token on a route that changes state",
    404: "Unknown id",
    409: "Conflicts with the current state (e.g. starting a running task)",
    413: "The request body is larger than --api-max-body (refused while it streams)",
    502: "The invocation failed on the proplet",
    503: "Shutting down, the store could not answer, or this manager is not the leader (Retry-After)",
    504: "The invocation timed out",
}
_REQUEST_MODELS: dict[str, type[BaseModel]] = {"Results": Results}  # + models only $ref'd in bodies


def _ref(model: type[BaseModel]) -> dict[str, str]:
    _REQUEST_MODELS[model.__name__] = model
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A query model as OpenAPI parameters (the handler parses them itself: 400 naming the key)."""
    schema = model.model_json_schema()
    params = []
    for name, prop in schema["properties"].items():
        prop = {k: v for k, v in prop.items() if k != "title"}
        description = prop.pop("description", "")
        if "anyOf" in prop:  # ``X | None``: absent is None; a given value is an X
            prop = {k: v for k, v in prop["anyOf"][0].items() if k != "title"} | {
                k: v for k, v in prop.items() if k not in ("anyOf", "default")
            }
        params.append(
            {"name": name, "in": "query", "required": False, "schema": prop, "description": description}
        )
    return params


def described(
    ok: Any = None,
    *,
    status: int = 200,
    errors: tuple[int, ...] = (),
    body: type[BaseModel] | None = None,
    body_optional: bool = False,
    multipart: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    media: dict[str, Any] | None = None,
    bodies: dict[int, Any] | None = None,
    open_route: bool = False,
    summary: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments of a route decorator that document it: its success body ``ok`` (a model, or
    ``media``: content by media type), the statuses in ``errors`` with the error body, its JSON
    ``body`` or ``multipart`` form, and its ``query`` parameters. 400, 401 and 503 can answer every
    route (bad Content-Length, token, standby); 403 and 413 every route that takes a body. ``bodies``:
    statuses whose body is not the error body (a model, or a schema dict). ``open_route``: served
    without a token."""
    codes = {400, 401, 503, *errors}
    responses: dict[int | str, Any] = {}
    if media is not None:
        responses[status] = {"description": STATUS_TEXT[status], "content": media}
    elif ok is not None:
        responses[status] = {"description": STATUS_TEXT[status], "model": ok}
    extra: dict[str, Any] = {}
    if body is not None or multipart is not None:
        codes |= {403, 413}
        content = (
            {"application/json": {"schema": _ref(body)}}
            if body is not None
            else {"multipart/form-data": {"schema": _ref(multipart)}}  # type: ignore[arg-type]
        )
        extra["requestBody"] = {"required": not body_optional, "content": content}
    if query is not None:
        extra["parameters"] = query_parameters(query)
    for code, model in (bodies or {}).items():
        if isinstance(model, dict):
            responses[code] = {"description": STATUS_TEXT[code], "content": {"application/json": model}}
        else:
            responses[code] = {"description": STATUS_TEXT[code], "model": model}
    if open_route:
        extra["security"] = [{}]
    for code in sorted(codes):
        responses.setdefault(code, {"description": STATUS_TEXT[code], "model": ErrorBody})
    kwargs: dict[str, Any] = {
        "status_code": status,
        "response_model": None,
        "responses": responses,
        "openapi_extra": extra or None,
    }
    if summary:
        kwargs["summary"] = summary
    return kwargs


def finish_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the request models FastAPI does not see, the bearer scheme, and drop FastAPI's 422
    (no route validates through FastAPI: our 400s name the field instead)."""
    from pydantic.json_schema import models_json_schema

    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _, defs = models_json_schema(
        [(m, "validation") for m in _REQUEST_MODELS.values()], ref_template="#/components/schemas/{model}"
    )
    schemas.update(defs.get("$defs", {}))
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "--api-token-read or --api-token-admin"}
    }
    schema["security"] = [{"bearer": []}, {}]  # {}: a manager without tokens needs none
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            operation.get("responses", {}).pop("422", None)
            for param in operation.get("parameters", []):
                if param["name"] == "task_id":  # any other string: 400 naming task_id
                    param["schema"]["format"] = "uuid"
    return schema
