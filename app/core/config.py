"""Service configuration: one pydantic-settings ``Settings``, read from ``PCB_*`` variables."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.model_files import default_card_path
from app.core.network import check_host_pattern

#: The weights shipped in the repository, used when ``PCB_WEIGHTS_PATH`` is not set.
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "pcb_defect_unet.keras"
#: Tiles in the model at once on a CPU with the automatic settings: batch size x concurrent
#: calls. Each tile holds 150-300 MB of activations while it runs, and beyond 2 nothing was
#: gained on the 2-core Intel AMX and AMD machines measured (README "Benchmarks").
AUTO_CPU_TILES_IN_FLIGHT = 2
#: The batch ``PCB_MAX_BATCH_SIZE=auto`` takes before warm-up measures it (and without warm-up).
AUTO_BATCH_CAP = 2
#: The largest batch ``auto`` tries on a GPU, where larger batches pay and the activations are
#: in the GPU's memory.
AUTO_BATCH_CAP_GPU = 16
#: File name of the golden-board (pair) model, looked for beside the single model's weights
#: when ``PCB_PAIR_WEIGHTS_PATH`` is not set: in the repository that is
#: ``weights/pcb_pair_unet.keras``, in the image ``/app/weights/...``, in compose ``/models/...``.
DEFAULT_PAIR_WEIGHTS_NAME = "pcb_pair_unet.keras"

#: What a key may do, each role including the ones before it: ``inspect`` (inspections and the
#: model's metadata), ``review`` (also reading records and reviewing them), ``admin`` (also
#: golden boards, exports and deleting records).
Role = Literal["inspect", "review", "admin"]
ROLES: tuple[Role, ...] = ("inspect", "review", "admin")


class ApiKey(BaseModel):
    """One accepted API key: who holds it (recorded as the reviewer) and what it may do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    role: Role = "inspect"
    key: str = Field(min_length=1, repr=False)


def _compact_key(entry: str) -> Any:
    """``name:role:key`` as an :class:`ApiKey` mapping; any other string is an old-form key.

    Only a known role in the middle makes it the compact form, so an old key that happens to
    contain colons keeps working as it did.
    """
    name, sep, rest = entry.partition(":")
    role, sep2, key = rest.partition(":")
    if sep and sep2 and role in ROLES and name.strip() and key:
        return {"name": name.strip(), "role": role, "key": key}
    return entry


class Settings(BaseSettings):
    """All settings of the service. Each field is read from ``PCB_<NAME>`` (case-insensitive).

    Lists (``PCB_API_KEYS``) are given as JSON, e.g. ``PCB_API_KEYS='["k1","k2"]'``.
    """

    model_config = SettingsConfigDict(env_prefix="PCB_", env_file=None, extra="ignore")

    # --- model -----------------------------------------------------------------------------
    weights_path: Path = Field(DEFAULT_WEIGHTS, description="The .keras weights file to serve.")
    model_card_path: Path | None = Field(
        None, description="Model card JSON; default: model_card.json beside the weights."
    )
    device: Literal["auto", "cpu", "gpu"] = Field("auto", description="Where the model runs.")
    precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Inference precision. auto: per model, bfloat16 on CPUs with AVX512_BF16/AMX "
        "or mixed float16 on a GPU where the model card records accuracy parity, else float32.",
    )
    pair_weights_path: Path | Literal[""] | None = Field(
        None,
        description="The golden-board (pair) model's .keras file; unset: pcb_pair_unet.keras "
        "beside the weights (served if present); empty: no pair model.",
    )
    pair_model_card_path: Path | None = Field(
        None,
        description="The pair model's card; default: <stem>.card.json beside its weights, else "
        "model_card.json.",
    )
    intra_op_threads: int = Field(0, ge=0, description="TF intra-op threads; 0 = one per core.")
    inter_op_threads: int = Field(0, ge=0, description="TF inter-op threads; 0 = TF default.")
    warmup: bool = Field(True, description="Run one warm-up inference before reporting ready.")

    # --- server ----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address of `pcb-inspect serve`.")
    port: int = Field(8000, ge=1, le=65535, description="Port of `pcb-inspect serve`.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # NoDecode: the environment value is parsed below, so that the way most operators set one
    # key (PCB_API_KEYS=secret) works as well as a JSON list or a comma-separated one.
    api_keys: Annotated[list[str | ApiKey], NoDecode] = Field(
        default_factory=list,
        description="Accepted API keys; empty turns auth off. Old form (role inspect): one "
        "key, 'k1,k2' or a JSON list of strings. With a name and a role: 'name:role:key,...' "
        "or a JSON list of {\"name\", \"role\", \"key\"}; roles: inspect, review, admin.",
    )
    shutdown_grace_s: float = Field(
        20.0, gt=0, description="How long in-flight work may finish after SIGTERM."
    )
    auth: Literal["auto", "on", "off"] = Field(
        "auto",
        description="auto: keys required when PCB_API_KEYS is set; without keys "
        "`pcb-inspect serve` binds loopback only and refuses any other PCB_HOST (exit 3). "
        "off: no keys, on any address, on purpose (PCB_API_KEYS must then be empty). on: "
        "PCB_API_KEYS must be set.",
    )
    # NoDecode: given as 'a.example,b.example' (or a JSON list), parsed below.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host headers accepted ('pcb.example,*.line.example'); any other gets "
        "400. Empty: any Host (off).",
    )
    forwarded_allow_ips: str = Field(
        "",
        description="Proxies whose X-Forwarded-For/-Proto are trusted by `pcb-inspect serve` "
        "(uvicorn's forwarded_allow_ips: IPs, CIDRs, or '*'). Empty: none, not even loopback.",
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535,
        description="Serve /metrics on this port of PCB_METRICS_HOST, without a key, instead "
        "of on the API's port (where, with auth on, it needs a key).",
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Bind address of the PCB_METRICS_PORT server."
    )

    # --- post-processing defaults (a request may override them) -----------------------------
    threshold: float | None = Field(
        None, ge=0, le=1, description="Confidence cut; default: the model card's."
    )
    min_area_px: int | None = Field(
        None, ge=0, description="Minimum defect area in pixels; default: the model card's."
    )
    pixels_per_mm: float | None = Field(
        None, gt=0, description="Scan resolution; default: the model card's."
    )
    min_confidence: float | None = Field(
        None, ge=0, le=1,
        description="Operating point: least confident defect reported; default: the card's.",
    )
    fail_rule: Literal["count", "area"] = Field(
        "count", description="Verdict rule: fail on defect count, or on total defect area."
    )
    fail_min_count: int = Field(1, ge=1, description="With fail_rule=count: defects to fail.")
    fail_min_area_mm2: float = Field(
        0.0, ge=0, description="With fail_rule=area: total mm2 above which a board fails."
    )

    # --- batching and tiling ---------------------------------------------------------------
    max_batch_size: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        "auto",
        description="Tiles per model call, at most. auto: measured at warm-up, the smallest "
        "of 1, 2 (CPU) or 1..16 (GPU) within 3% of the fastest per tile (on a CPU every tile "
        "of a batch holds 150-300 MB of activations while a larger batch gains little).",
    )
    max_wait_ms: float = Field(
        3.0, ge=0, le=1000, description="How long a model call waits to fill its batch."
    )
    model_concurrency: Annotated[int, Field(ge=1, le=8)] | Literal["auto"] = Field(
        "auto",
        description="Model calls running at once, per model. auto: 2 on a CPU (a call stalls "
        "whenever other work takes a core; a second call in flight uses that time), 1 on a GPU.",
    )
    max_queue_tiles: int = Field(
        256, ge=1, description="Tiles waiting for the model, at most; past it: 503."
    )
    tile_overlap: int | None = Field(
        None, ge=0, description="Overlap of neighbouring tiles in pixels; default: tile size / 10."
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="Past it (plus the per-tile allowance) a request gets 504."
    )
    request_timeout_per_tile_s: float = Field(
        1.0, ge=0,
        description="Added to the timeout for each 640 px tile of the board beyond the first, "
        "so that a large board can finish at the defaults (a tile takes 0.2-0.6 s on 2 cores).",
    )

    pair_gating: Literal["on", "off"] = Field(
        "on",
        description="on: only tiles near a difference from the registered golden board go "
        "through the pair model (the single model skips blank tiles); off: every tile. "
        "Per request: ?gating=off.",
    )

    @property
    def batch_size_cap(self) -> int:
        """The batch at load: the setting, or :data:`AUTO_BATCH_CAP` with ``auto`` (then
        measured at warm-up, :meth:`auto_batch_cap`)."""
        return AUTO_BATCH_CAP if self.max_batch_size == "auto" else self.max_batch_size

    def concurrency_for(self, device: str) -> int:
        """Model calls at once on ``device``: the setting, or with ``auto`` one call a tile of
        :data:`AUTO_CPU_TILES_IN_FLIGHT` on a CPU (2) and a single call on a GPU."""
        if self.model_concurrency != "auto":
            return self.model_concurrency
        return 1 if device == "gpu" else AUTO_CPU_TILES_IN_FLIGHT

    def auto_batch_cap(self, device: str) -> int:
        """The largest batch ``PCB_MAX_BATCH_SIZE=auto`` may choose on ``device``.

        On a CPU the tiles in the model at once stay within :data:`AUTO_CPU_TILES_IN_FLIGHT`
        (with two concurrent calls: batches of one), which the memory budget's fixed part
        assumes; on a GPU up to :data:`AUTO_BATCH_CAP_GPU`.
        """
        if device == "gpu":
            return AUTO_BATCH_CAP_GPU
        return max(1, AUTO_CPU_TILES_IN_FLIGHT // self.concurrency_for(device))

    def request_timeout_for(self, tiles: int) -> float:
        """The timeout of a board of ``tiles`` tiles."""
        return self.request_timeout_s + self.request_timeout_per_tile_s * max(0, tiles - 1)

    # --- limits ------------------------------------------------------------------------------
    max_body_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="Request body, counted as it arrives."
    )
    max_image_pixels: int = Field(
        100_000_000, ge=1, description="Pixels per image (also Pillow's bomb guard)."
    )
    max_inflight_pixels: int = Field(
        200_000_000, ge=1,
        description="Memory budget: pixels of the boards being inspected at once (a pair "
        "board counts twice). Each costs about 16 bytes while in flight; a board that does not "
        "fit gets 503 + Retry-After before any of it is computed. At least max_image_pixels.",
    )
    min_image_side: int = Field(8, ge=1, description="Smallest accepted width or height.")
    max_batch_files: int = Field(32, ge=1, description="Files per batch request.")
    max_form_fields: int = Field(16, ge=0, description="Non-file multipart fields per request.")
    max_filename_chars: int = Field(255, ge=1, description="Longest accepted filename.")

    # --- golden boards ---------------------------------------------------------------------
    data_dir: Path = Field(
        Path("data"),
        description="Where golden boards are stored (golden/ below it); share it between "
        "replicas.",
    )
    golden_cache_mb: float = Field(
        256.0, ge=0, description="Memory bound of the cache of decoded golden boards (MiB)."
    )

    # --- inspection records (issue 13) ------------------------------------------------------
    records: bool = Field(True, description="Record every inspection; false: none at all.")
    database_url: str | None = Field(
        None,
        description="Records database; unset: SQLite records.db in PCB_DATA_DIR (migrated at "
        "startup). postgresql+psycopg://... for several replicas (run `pcb-inspect db upgrade`).",
    )
    keep_images: Literal["none", "failed", "all"] = Field(
        "failed", description="Which boards' images are kept (under images/ in PCB_DATA_DIR)."
    )
    image_retention_days: float = Field(
        30.0, ge=0, description="Kept images older than this are removed."
    )
    image_retention_mb: float = Field(
        2048.0, ge=0, description="Kept images beyond this total (MiB) are removed, oldest first."
    )

    # --- IPC-CFX messages over AMQP 1.0 (off while cfx_broker_url is unset) ------------------
    cfx_broker_url: str | None = Field(
        None, description="AMQP 1.0 broker, amqp[s]://[user[:password]@]host[:port]; unset: no "
        "CFX messages.",
    )
    cfx_address: str = Field("/queue/cfx", min_length=1,
                             description="Where messages go on the broker (node address).")
    cfx_handle: str = Field("pcb-inspect", min_length=1, max_length=128,
                            description="This endpoint's CFX handle (the envelope's Source).")
    cfx_password_file: Path | None = Field(
        None, description="File holding the broker password (a secret), instead of the URL's.")
    cfx_ca_file: Path | None = Field(None, description="amqps: CA bundle to verify the broker.")
    cfx_cert_file: Path | None = Field(None, description="amqps: client certificate (PEM).")
    cfx_key_file: Path | None = Field(None, description="amqps: client certificate's key.")

    # Whether the pair weights path is the default one (then a missing file is only a warning).
    _pair_weights_default: bool = PrivateAttr(False)

    @field_validator("database_url", "cfx_broker_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, value: Any) -> Any:
        # compose passes PCB_DATABASE_URL=${PCB_DATABASE_URL:-}: empty means the default.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [h.strip() for h in text.split(",") if h.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, hosts: list[str]) -> list[str]:
        return [check_host_pattern(h) for h in hosts]

    @model_validator(mode="after")
    def _auth_matches_keys(self) -> Settings:
        if self.auth == "on" and not self.api_keys:
            raise ValueError("PCB_AUTH=on but PCB_API_KEYS is empty; set the keys")
        if self.auth == "off" and self.api_keys:
            raise ValueError(
                "PCB_AUTH=off but PCB_API_KEYS is set; unset one of them (off means no keys)"
            )
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError(
                f"PCB_METRICS_PORT={self.metrics_port} is the API's port; choose another"
            )
        return self

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text.startswith("["):
                return [_compact_key(k.strip()) for k in text.split(",")] if text else []
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"PCB_API_KEYS looks like a JSON list but is not valid JSON ({exc.msg}); "
                    "expected e.g. '[\"key1\", \"key2\"]', 'key1,key2' or one key"
                ) from None
        if isinstance(value, list):
            return [_key_object(i, v) if isinstance(v, dict) else v
                    for i, v in enumerate(value, start=1)]
        return value

    @field_validator("api_keys")
    @classmethod
    def _no_empty_keys(cls, keys: list[str | ApiKey]) -> list[str | ApiKey]:
        # Strings inside a JSON list may use the compact form too.
        keys = [_as_key(k) for k in keys]
        if any(not (k.key if isinstance(k, ApiKey) else k).strip() for k in keys):
            raise ValueError("api_keys must not contain empty keys")
        names = [k.name for k in _entries(keys)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            # The name is what a review records as its reviewer: it must tell keys apart.
            raise ValueError(f"api_keys: key names must be unique; {twice} appear twice")
        return keys

    @model_validator(mode="after")
    def _largest_board_fits_the_budget(self) -> Settings:
        # Otherwise a board that passes the size limit could never be admitted, even idle.
        if self.max_inflight_pixels < self.max_image_pixels:
            raise ValueError(
                f"max_inflight_pixels ({self.max_inflight_pixels:,}) must be at least "
                f"max_image_pixels ({self.max_image_pixels:,}), or the largest board accepted "
                "could never be admitted"
            )
        return self

    @model_validator(mode="after")
    def _card_beside_weights(self) -> Settings:
        if self.model_card_path is None:
            self.model_card_path = self.weights_path.with_name("model_card.json")
        if self.pair_weights_path is None:
            self.pair_weights_path = self.weights_path.with_name(DEFAULT_PAIR_WEIGHTS_NAME)
            self._pair_weights_default = True
        if self.pair_weights_path and self.pair_model_card_path is None:
            self.pair_model_card_path = default_card_path(self.pair_weights_path)
        return self

    @property
    def pair_weights(self) -> Path | None:
        """The pair model's weights file, or ``None`` when the pair model is switched off."""
        return self.pair_weights_path or None

    @property
    def pair_weights_is_default(self) -> bool:
        """Whether the pair weights path was not configured (a missing file is then fine)."""
        return self._pair_weights_default

    @property
    def cfx_enabled(self) -> bool:
        """Whether inspections and reviews are published as CFX messages."""
        return self.cfx_broker_url is not None

    @property
    def golden_dir(self) -> Path:
        """The folder of the golden-board store."""
        return self.data_dir / "golden"

    @property
    def auth_enabled(self) -> bool:
        """Whether requests must carry an API key."""
        return bool(self.api_keys)

    @property
    def key_entries(self) -> list[ApiKey]:
        """Every accepted key with its name and role (old-form keys: ``key-N``, ``inspect``)."""
        return _entries(self.api_keys)

    def effective_intra_op_threads(self) -> int:
        """Intra-op threads to give TF: the setting, or the cores this process may use."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1
        )


def _key_object(index: int, entry: dict[str, Any]) -> ApiKey:
    # Checked here, not left to the union: pydantic would report the entry as "not a valid
    # string" (the first member of str | ApiKey) instead of what is wrong with it.
    try:
        return ApiKey.model_validate(entry)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "entry"
        shown = f" {err['input']!r}" if field in ("name", "role") else ""
        raise ValueError(
            f"PCB_API_KEYS entry {index}: {field}{shown}: {err['msg']}; expected "
            '{"name": "...", "role": "inspect"|"review"|"admin", "key": "..."}'
        ) from None


def _as_key(entry: str | ApiKey) -> str | ApiKey:
    compact = _compact_key(entry) if isinstance(entry, str) else entry
    return ApiKey(**compact) if isinstance(compact, dict) else compact


def _entries(keys: list[str | ApiKey]) -> list[ApiKey]:
    # The name of an old-form key is its position, never the key itself (names are logged
    # and stored with reviews).
    return [k if isinstance(k, ApiKey) else ApiKey(name=f"key-{i}", role="inspect", key=k)
            for i, k in enumerate(keys, start=1)]


@lru_cache
def get_settings() -> Settings:
    """Returns the process-wide settings, read once from the environment."""
    return Settings()
